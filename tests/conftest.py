"""Shared test fixtures: where the reference data lives, and small helpers."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "reference"
GOLDEN = REFERENCE / "golden"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """`../shared/reference/` beside the checkout; tests needing it skip when it is absent."""
    if not REFERENCE.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE} (expected ../shared beside the repo)")
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
