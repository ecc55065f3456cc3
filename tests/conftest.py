"""Shared test fixtures: where the reference data lives, and small helpers."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
# Copied from shared/reference/ (fixtures and manifests from the official implementation; provenance in
# golden/README.md), so that a fresh clone runs every parity test with nothing beside it.
REFERENCE = DATA / "reference"
GOLDEN = REFERENCE / "golden"
# The project's shared folder beside the checkout (guides, hosts): optional, never needed by the unit suite.
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """`tests/data/reference/`: the official manifests, text embeddings and golden fixtures."""
    assert (GOLDEN / "README.md").is_file(), f"reference data missing from the checkout: {REFERENCE}"
    return REFERENCE


@pytest.fixture(scope="session")
def golden_dir(reference_dir: Path) -> Path:
    return reference_dir / "golden"


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # The suite runs tiny models: extra intra-op threads only add contention on a small CI box.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module", params=["3b", "7b"])
def family(request) -> str:
    """The two SeedVR2 DiT families (golden fixtures `dit3b_tiny_*`, `dit7b_tiny_*`)."""
    return request.param
