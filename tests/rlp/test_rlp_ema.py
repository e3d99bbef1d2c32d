"""Weight EMA: update math vs a float64 reference, first-step init, bit-exact swap/restore, checkpoint round trip."""

import pytest
import torch

from nemo_smartpt.rlp import EMAStateError, ParamEMA


def make_params(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(4, 3, generator=gen).to(dtype)),
        torch.nn.Parameter(torch.randn(5, generator=gen).to(dtype)),
    ]


def perturb(params, step):
    gen = torch.Generator().manual_seed(100 + step)
    with torch.no_grad():
        for p in params:
            p.add_(0.1 * torch.randn(p.shape, generator=gen).to(p.dtype))


def test_first_update_copies_then_decays_like_reference():
    params = make_params()
    ema = ParamEMA(decay=0.9)
    ema.update(params)  # first step: φ = θ, nothing decayed yet
    assert ema.num_updates == 0 and all(torch.equal(s, p.detach()) for s, p in zip(ema.shadow, params))
    ref = [[float(x) for x in p.detach().reshape(-1)] for p in params]
    for step in range(5):
        perturb(params, step)
        ema.update(params)
        for i, p in enumerate(params):
            theta = [float(x) for x in p.detach().double().reshape(-1)]
            ref[i] = [0.9 * phi + 0.1 * th for phi, th in zip(ref[i], theta)]
    assert ema.num_updates == 5
    for s, r in zip(ema.shadow, ref):
        assert s.dtype == torch.float32
        assert torch.allclose(s.double().reshape(-1), torch.tensor(r, dtype=torch.float64), atol=1e-6)
    # and it really lags: the shadow differs from the live weights after updates
    assert not torch.allclose(ema.shadow[0], params[0].detach())


def test_bf16_params_keep_fp32_shadow_updates():
    params = make_params(torch.bfloat16)
    ema = ParamEMA(decay=0.999)
    ema.update(params)
    start = [s.clone() for s in ema.shadow]
    with torch.no_grad():
        params[0].add_(1.0)
    ema.update(params)
    # (1 − τ)·1 = 1e-3 is below bf16 resolution near 1, but the fp32 shadow records it
    assert torch.allclose(ema.shadow[0] - start[0], torch.full_like(start[0], 1e-3), atol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swap_in_is_bit_exact_and_gradient_free(dtype):
    params = make_params(dtype)
    ema = ParamEMA(decay=0.5)
    ema.update(params)
    perturb(params, 0)
    ema.update(params)
    perturb(params, 1)
    before = [p.detach().clone() for p in params]
    with ema.swapped_in(params):
        assert not torch.is_grad_enabled()
        for p, s, b in zip(params, ema.shadow, before):
            assert torch.equal(p.detach(), s.to(dtype))
            assert not torch.equal(p.detach(), b)  # φ really is in the live tensors
        out = (params[0] * 2).sum()
        assert not out.requires_grad
    assert torch.is_grad_enabled()
    for p, b in zip(params, before):
        assert torch.equal(p.detach().view(torch.uint8), b.view(torch.uint8))  # bit-exact
        assert p.requires_grad


def test_swap_restores_after_exception_and_inits_lazily():
    params = make_params()
    before = [p.detach().clone() for p in params]
    ema = ParamEMA()
    with pytest.raises(RuntimeError, match="boom"):
        with ema.swapped_in(params):
            with torch.no_grad():
                params[0].zero_()  # a forward that scribbles on the weights must not leak either
            raise RuntimeError("boom")
    assert ema.initialized and ema.num_updates == 0
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))


def test_state_dict_round_trip_continues_identically():
    params = make_params()
    ema = ParamEMA(decay=0.95)
    for step in range(3):
        ema.update(params)
        perturb(params, step)
    state = ema.state_dict()
    restored = ParamEMA(decay=0.1)  # decay comes from the checkpoint
    restored.load_state_dict(state, params)
    assert restored.decay == 0.95 and restored.num_updates == ema.num_updates
    state["shadow"][0].add_(1.0)  # the checkpoint is a copy: mutating it does not touch either EMA
    for step in range(3, 5):
        perturb(params, step)
        ema.update(params)
        restored.update(params)
    assert all(torch.equal(a, b) for a, b in zip(ema.shadow, restored.shadow))
    fresh = ParamEMA()
    fresh.load_state_dict(ParamEMA().state_dict())
    assert not fresh.initialized


def test_mismatched_parameters_raise():
    params = make_params()
    ema = ParamEMA()
    ema.update(params)
    with pytest.raises(EMAStateError):
        ema.update(params[:1])
    with pytest.raises(EMAStateError):
        ema.update([torch.zeros(4, 3), torch.zeros(6)])
    with pytest.raises(EMAStateError):
        ParamEMA().load_state_dict({"decay": 0.9})
    with pytest.raises(ValueError):
        ParamEMA(decay=1.0)
