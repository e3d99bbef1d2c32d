"""The EMA φ as a Megatron distributed checkpoint: saved under TP=2, resumed under TP=1 (gloo, CPU).

The shadows are set to a known function of the full weights (φ = 0.5·θ + 1, shard by shard) so the TP=1 load can be
checked against a float64 reference built from the TP=1 state dict alone, parameter by parameter, by name.
"""

from __future__ import annotations

import pytest
import torch

from nemo_smartpt.testing.distributed import run_distributed

pytestmark = [pytest.mark.distributed]


def _reference(rank, world_size, state_path):
    from nemo_smartpt.testing.megatron import TinyGPTSpec, build_tiny_gpt, init_model_parallel

    init_model_parallel(1, 1, seed=3)
    model = build_tiny_gpt(TinyGPTSpec())
    torch.save({k: v.clone() for k, v in model.state_dict().items() if v is not None}, state_path)


def _save_tp2(rank, world_size, state_path, ckpt_dir):
    from nemo_smartpt.rlp.megatron.ema_checkpoint import save_ema_checkpoint
    from nemo_smartpt.testing.megatron import TinyGPTSpec, build_tiny_gpt, init_model_parallel, load_full_state_dict

    init_model_parallel(2, 1, seed=5)
    spec = TinyGPTSpec()
    model = build_tiny_gpt(spec)
    load_full_state_dict(model, torch.load(state_path), spec.num_layers)
    params = list(model.parameters())
    shadows = [p.detach().float() * 0.5 + 1.0 for p in params]
    save_ema_checkpoint(model, shadows, params, ckpt_dir, {"rlp_start_step": 4, "num_updates": 9})


def _load_tp1(rank, world_size, state_path, ckpt_dir):
    from nemo_smartpt.rlp.megatron.ema_checkpoint import load_ema_checkpoint
    from nemo_smartpt.testing.megatron import TinyGPTSpec, build_tiny_gpt, init_model_parallel

    init_model_parallel(1, 1, seed=8)  # other initial weights: only the checkpoint can supply the expected φ
    model = build_tiny_gpt(TinyGPTSpec())
    names = [n for n, _ in model.named_parameters()]
    shadows, common = load_ema_checkpoint(model, list(model.parameters()), ckpt_dir)
    return dict(zip(names, shadows)), common


def test_ema_saved_under_tp2_resumes_under_tp1(tmp_path):
    state_path, ckpt = str(tmp_path / "full.pt"), tmp_path / "iter_0000004" / "rlp_ema"
    run_distributed(_reference, 1, state_path)
    run_distributed(_save_tp2, 2, state_path, ckpt)
    ((shadows, common),) = run_distributed(_load_tp1, 1, state_path, ckpt)
    full = torch.load(state_path)
    assert common == {"rlp_start_step": 4, "num_updates": 9}
    assert set(shadows) == {n for n in full if not n.endswith("_extra_state")}
    for name, shadow in shadows.items():
        expected = full[name].double() * 0.5 + 1.0
        torch.testing.assert_close(shadow.double(), expected, rtol=0, atol=1e-6, msg=name)
