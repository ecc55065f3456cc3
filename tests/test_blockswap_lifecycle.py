"""Block swap under the host's conditions: inference mode, reference counting, tied weights,
torch.compile, autograd, threads, placement calls."""
from __future__ import annotations

import copy
import gc
import threading
import weakref

import pytest
import torch
from torch import nn

from blockswap import BlockSwapConfig, apply_block_swap
from blockswap.host import SharedTensorError
from blockswap_double import DeferredBackend, MasterReadDetector
from test_blockswap import ToyDiT, inputs, make_pair, swap


@pytest.fixture
def no_gc():
    """Reference counting only: a cycle would keep its objects alive until the test ends.
    (torch._dynamo's first import leaves a frame cycle holding its caller's locals: import it first.)"""
    torch.compiler.disable(lambda: None)
    gc.collect()
    gc.disable()
    yield
    gc.enable()


@pytest.mark.parametrize("mode", ["inference", "no_grad", "plain"])
def test_a_model_built_and_run_in_each_grad_mode_equals_unswapped(mode):
    """ComfyUI builds models and runs nodes under inference mode: Parameters made there cannot
    be rebound to normal storage, so the engine rebuilds them over the master."""
    ctx = {"inference": torch.inference_mode, "no_grad": torch.no_grad, "plain": torch.enable_grad}[mode]
    torch.manual_seed(4)
    state = ToyDiT().state_dict()
    with ctx():
        ref = ToyDiT().requires_grad_(False)
        ref.load_state_dict(state)
        model = ToyDiT().requires_grad_(False)
        model.load_state_dict(state)
        handle = apply_block_swap(model, BlockSwapConfig(blocks_to_swap=4), "cpu", allow_cpu_device=True)
        for seed in range(3):
            assert torch.equal(model(*inputs(seed)), ref(*inputs(seed)))
        handle.offload()
        assert torch.equal(model(*inputs()), ref(*inputs()))
    handle.remove()
    assert not any(p.is_inference() for p in model.parameters())
    assert torch.equal(model(*inputs()), ref(*inputs()))


def test_a_dropped_model_is_freed_by_reference_counting(no_gc):
    _, model = make_pair()
    handle = apply_block_swap(model, BlockSwapConfig(blocks_to_swap=3, swap_io_components=True), "cuda",
                              backend=DeferredBackend())
    with torch.inference_mode():
        model(*inputs())
    model_ref, handle_ref = weakref.ref(model), weakref.ref(handle)
    master = weakref.ref(handle.blocks[0].buffer)
    del model, handle
    assert model_ref() is None and handle_ref() is None and master() is None


def test_a_removed_handle_keeps_nothing_alive(no_gc):
    _, model = make_pair()
    handle = swap(model, blocks_to_swap=3)
    model(*inputs())
    handle.remove()
    model_ref = weakref.ref(model)
    del model
    assert model_ref() is None
    assert handle.model is None


def test_pins_are_returned_when_the_model_is_dropped(no_gc):
    from blockswap.pinning import PinBudget

    budget = PinBudget(1 << 40)
    backend = DeferredBackend()
    _, model = make_pair()
    apply_block_swap(model, BlockSwapConfig(blocks_to_swap=5), "cuda", backend=backend, pin_budget=budget)
    assert budget.used > 0 and backend.registered
    del model
    assert budget.used == 0 and backend.registered == {}


class TiedDiT(ToyDiT):
    """vid_out shares its weight with block 5's fc2 bias-free twin (tied weights)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4 * 32, 32, bias=False)
        self.head.weight = self.blocks[5].fc2.weight

    def forward(self, x, t):  # the head runs before the block that owns its weight
        bias = self.head(torch.ones(x.shape[0], 4 * 32)).sum()
        return super().forward(x, t) + bias


def test_a_tensor_shared_with_a_swapped_block_is_refused_naming_both():
    torch.manual_seed(5)
    model = TiedDiT().requires_grad_(False)
    with pytest.raises(SharedTensorError, match=r"'blocks\.5\.fc2\.weight' and 'head\.weight'|'head\.weight' and "
                                                 r"'blocks\.5\.fc2\.weight'"):
        swap(model, blocks_to_swap=8)
    assert "_blockswap_handle" not in vars(model)  # a refused apply leaves no handle behind


def test_a_tensor_shared_between_resident_units_is_packed_once_and_correct():
    torch.manual_seed(5)
    ref = TiedDiT().requires_grad_(False)
    model = copy.deepcopy(ref)
    handle = apply_block_swap(model, BlockSwapConfig(blocks_to_swap=2, placement="first"), "cuda",
                              backend=DeferredBackend())
    assert model.head.weight is model.blocks[5].fc2.weight
    detector = MasterReadDetector([u.buffer for u in handle.blocks + handle.io + handle.loose])
    with torch.inference_mode(), detector:
        for seed in range(3):
            assert torch.equal(model(*inputs(seed)), ref(*inputs(seed)))
    assert detector.reads == []
    handle.remove()


def test_compiled_blocks_match_and_do_not_recompile_after_warm_up():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    ref, model = make_pair()
    handle = swap(model, blocks_to_swap=4, prefetch_blocks=2)
    counter = CompileCounter()
    for i, block in enumerate(model.blocks):
        model.blocks[i] = torch.compile(block, backend=counter, dynamic=False)
    with torch.no_grad():
        for seed in range(2):
            assert torch.equal(model(*inputs(seed)), ref(*inputs(seed)))
        warm = counter.frame_count
        for seed in range(2, 6):
            assert torch.equal(model(*inputs(seed)), ref(*inputs(seed)))
    assert warm > 0 and counter.frame_count == warm
    torch._dynamo.reset()


def test_autograd_with_trainable_weights_is_refused_clearly():
    model = ToyDiT()  # requires_grad=True, as nn.Linear makes it
    handle = swap(model, blocks_to_swap=2)
    with pytest.raises(RuntimeError, match="BlockSwap is for inference.*requires grad.*no_grad"):
        model(*inputs())
    with torch.no_grad():
        model(*inputs())  # fine without autograd
    handle.remove()


def test_a_second_thread_is_refused_while_a_forward_runs():
    _, model = make_pair()
    handle = swap(model, blocks_to_swap=3)
    errors, inside, release = [], threading.Event(), threading.Event()

    def block_hook(module, args):
        inside.set()
        release.wait(5)

    h = model.blocks[4].register_forward_pre_hook(block_hook)
    worker = threading.Thread(target=lambda: model(*inputs()))
    worker.start()
    assert inside.wait(5)
    try:
        model(*inputs())
    except RuntimeError as exc:
        errors.append(str(exc))
    release.set()
    worker.join()
    h.remove()
    assert errors and "already running a forward in another thread" in errors[0]
    model(*inputs())  # free again once the first forward returned
    handle.remove()


def test_to_a_tensor_of_the_same_dtype_is_a_move_not_a_conversion(caplog):
    _, model = make_pair()
    handle = swap(model, blocks_to_swap=2)
    assert model.to(torch.zeros(1)) is model
    assert model.to(torch.float32) is model
    with pytest.raises(RuntimeError, match="dtype/format change"):
        model.to(torch.zeros(1, dtype=torch.float16))
    handle.remove()
