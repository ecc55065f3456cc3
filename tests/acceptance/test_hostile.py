"""What an attacker (or a careless client) posts to the real server: model names that leave the
model folders, and an output size no machine can hold. The server answers with our message,
reveals nothing about its file system, and keeps serving."""
from __future__ import annotations

import copy
import json
import os
import struct

import pytest

from . import media
from .harness import PromptRejected
from .workflow import LOAD_DIT, LOAD_VAE, SMALL, UPSCALE, check_outputs, is_video, only, small_prompt

pytestmark = pytest.mark.acceptance

SECRET = "customer_db_password_hunter2"
REFUSED = "is not a model file in the SeedVR2 model folders"


@pytest.fixture(scope="module")
def outside_file(tmp_path_factory):
    """A foreign safetensors file outside every model folder, with a secret key name."""
    path = tmp_path_factory.mktemp("outside") / "x.safetensors"
    header = json.dumps({f"{SECRET}.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    return path


@pytest.fixture(scope="module")
def base_prompt(video_example, small_inputs, model_files):
    return small_prompt(video_example[2], small_inputs["video"][0], dit=model_files.dit, vae=model_files.vae,
                        seed=21, prefix="hostile")


def _healthy(comfy) -> None:
    assert comfy.alive(), "the server died"
    assert comfy.get_json("/system_stats")["system"], "the server does not answer"


@pytest.mark.parametrize("loader", [LOAD_DIT, LOAD_VAE])
def test_model_names_outside_the_model_folders_are_refused_alike(comfy, base_prompt, model_files, outside_file,
                                                                 acceptance_report, loader):
    loader_id = only(base_prompt, loader)
    names = [os.path.relpath(outside_file, model_files.folder),          # traversal to a file that exists
             os.path.relpath(outside_file.with_name("none.safetensors"), model_files.folder),  # ... that does not
             str(outside_file), str(outside_file.with_name("none.safetensors")),             # absolute
             "../" * 16 + "etc/passwd", str(model_files.folder / model_files.dit)]           # absolute inside
    details = []
    for name in names:
        prompt = copy.deepcopy(base_prompt)
        prompt[loader_id]["inputs"]["model"] = name
        with pytest.raises(PromptRejected) as rejected:
            comfy.queue(prompt)
        errors = rejected.value.input_errors(loader_id)
        assert [input_name for input_name, _ in errors] == ["model"], f"{name}: {rejected.value.body}"
        body = json.dumps(rejected.value.body)
        assert SECRET not in body and "top-level key" not in body, body
        assert REFUSED in errors[0][1], errors
        details.append(errors[0][1].replace(repr(name), "NAME"))
    assert len(set(details)) == 1, f"the answers differ by name (they reveal the file system): {set(details)}"
    acceptance_report.add(f"{loader}: {len(names)} traversal/absolute model names refused alike at queue time: "
                          f"{details[0][:150]}")
    _healthy(comfy)


def test_a_huge_resolution_ends_in_our_message_and_the_server_stays_healthy(comfy, comfy_install, examples,
                                                                           small_inputs, model_files, tmp_path,
                                                                           acceptance_report):
    image_example = [prompt for _, prompt in examples.values() if not is_video(prompt)]
    assert image_example, "no image example workflow"
    strip = media.make_input(comfy_install.python, tmp_path / "strip.png", frames=1, width=512, height=4)
    prompt = small_prompt(image_example[0], comfy.upload_image(strip), dit=model_files.dit, vae=model_files.vae,
                          seed=22, prefix="huge", resolution=16384)
    rss_before = comfy.rss_mb()
    result = comfy.run(prompt, timeout=600)
    assert result.status == "error", result.describe()
    err = result.event("execution_error")
    message = err["exception_message"]
    assert err["node_id"] == only(prompt, UPSCALE), err
    assert message.startswith("resolution=16384 gives 1 output frame(s) of 2097152x16384 (WxH), which need at "
                              "least"), message
    assert "bytes) of host memory" in message and "is available" in message, message
    grew = comfy.rss_mb() - rss_before
    acceptance_report.add(f"resolution=16384 on a 512x4 image: refused in {result.seconds:.1f}s, RSS {grew:+.0f} MiB: "
                          f"{message[:160]}")
    assert grew < 500, f"the server grew by {grew:.0f} MiB on a refused run"
    _healthy(comfy)
    # and the next ordinary run works
    name, frames = small_inputs["image"]
    ok = small_prompt(image_example[0], name, dit=model_files.dit, vae=model_files.vae, seed=23, prefix="after_huge")
    after = comfy.run(ok, timeout=900)
    assert after.status == "success", after.describe()
    check_outputs(comfy, comfy_install.python, ok, after, frames, expect_wh=SMALL["expect_wh"])
