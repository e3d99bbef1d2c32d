"""The CPU runtime: every shim still answers a hard-code that exists in the pinned upstream, and the model runs."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

from nemo_smartpt.runtime import cpu

PINNED = {"megatron-core": "0.19.2", "megatron-bridge": "0.6.2", "torch": "2.14.1"}


def test_pinned_versions_are_installed():
    # The shims were measured against these versions; a different one needs the anchors re-checked.
    found = {name: importlib.metadata.version(name).split("+")[0] for name in PINNED}
    assert found == PINNED


@pytest.mark.parametrize("shim", cpu.SHIMS, ids=lambda s: s.name)
def test_every_shim_anchor_is_still_upstream(shim):
    rows = {row[0].name: row for row in cpu.shim_anchor_report()}
    _, path, present = rows[shim.name]
    assert present, (
        f"shim {shim.name!r}: the line {shim.anchor!r} is no longer in {path}. Upstream changed under the shim "
        f"({shim.why}); re-measure it and update nemo_smartpt/runtime/cpu.py."
    )


def test_source_patch_refuses_a_changed_file(tmp_path, monkeypatch):
    # The import-time line replacement must fail loudly, not silently import the unpatched module.
    module_file = tmp_path / "fake_upstream.py"
    module_file.write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cpu._SOURCE_PATCHES, "fake_upstream", ("import transformer_engine", "te = None"))
    finder = cpu._PatchingFinder()
    monkeypatch.setattr(cpu._PatchingFinder, "_names", frozenset({"fake_upstream"}))
    spec = finder.find_spec("fake_upstream", None)
    module = importlib.util.module_from_spec(spec)
    with pytest.raises(cpu.ShimError, match="expected line"):
        spec.loader.exec_module(module)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the shims apply only without CUDA")
def test_runtime_is_active_and_maps_cuda_requests():
    assert cpu.is_active()
    assert torch.zeros(2, device="cuda").device.type == "cpu"
    assert torch.ones(1).cuda().device.type == "cpu"
    assert torch.ones(1).to("cuda:0").device.type == "cpu"
    assert torch.ones(1).type() == "torch.cuda.FloatTensor"
    assert torch.ones(1, dtype=torch.long).type() == "torch.LongTensor"
    assert torch.cuda.current_device() == torch.device("cpu")
    torch.cuda.synchronize()
    with torch.cuda.stream(torch.cuda.Stream()):
        torch.cuda.nvtx.range_push("x")
        torch.cuda.nvtx.range_pop()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the shims apply only without CUDA")
def test_bridge_imports_with_gpu_only_lines_replaced():
    import megatron.bridge.peft.lora_layers as lora_layers
    import megatron.bridge.training.initialize as initialize
    import megatron.bridge.training.pretrain as pretrain

    assert lora_layers.te is None
    assert pretrain.CallWrapper is object
    assert initialize.initialize_megatron._smartpt_cpu
    initialize.compile_helpers()  # checks the wheel's compiled helpers instead of running make


def test_rng_tracker_forks_cpu_streams(single_process_group):
    from megatron.core import tensor_parallel

    tracker = tensor_parallel.get_cuda_rng_tracker()
    torch.manual_seed(0)
    outside_before = torch.rand(3)
    torch.manual_seed(0)
    with tracker.fork():
        inside = torch.rand(3)
    outside_after = torch.rand(3)
    # The fork draws from its own stream and leaves the default stream where it was.
    assert torch.equal(outside_before, outside_after)
    assert not torch.equal(inside, outside_before)
    with tracker.fork():
        inside_again = torch.rand(3)
    assert not torch.equal(inside, inside_again)  # the named stream advanced


def test_tiny_gpt_forward_backward(tiny_gpt, tiny_indexed_dataset):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    data = IndexedDataset(tiny_indexed_dataset)
    tokens = torch.as_tensor(data[0][:17].astype("int64"))[None]
    logits_loss = tiny_gpt(tokens[:, :-1], torch.arange(16)[None], None, labels=tokens[:, 1:])
    assert logits_loss.shape == (1, 16)
    logits_loss.mean().backward()
    assert all(p.grad is not None for p in tiny_gpt.parameters())
