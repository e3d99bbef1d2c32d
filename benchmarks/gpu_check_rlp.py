"""GPU check of the Megatron RLP step, for a lent H100 (one GPU, NCCL world of 1, local layer spec, bf16).

Checks, each printed as ``[ok]``/``[fail]``/``[skip]`` with numbers:

1. KV-cache greedy generation equals re-encoding, token for token (fp32 weights: bf16 kernels may break exact ties).
2. megatron-core's dynamic inference engine (flash-attn paged kernels, prefix caching) against our KV-cache sampler
   in bf16: greedy token agreement, and sampled generation time of the same groups with each, as a ratio, with the
   prompt tokens the prefix cache served.
3. One RLP step in bf16 with each generation engine (positions, G rollouts, EMA baseline, training forward +
   backward): time split (generation / baseline / training), tokens/s, and the step time per document vs a
   next-token step on the same samples (the paper reports 0.44x on its HF stack).
4. A hybrid Mamba model (megatron-core ``HybridModel`` + ``hybrid_stack_spec``) when ``mamba_ssm`` and Transformer
   Engine import: RLP preparation through the dynamic engine (which holds the Mamba states per request; our KV-cache
   sampler caches attention only) and a loss backward through the hybrid stack.

Usage (copy the repo with megatron-core / megatron-bridge wheels on the GPU machine)::

    python benchmarks/gpu_check_rlp.py                 # on a CUDA machine
    python benchmarks/gpu_check_rlp.py --dry-run       # anywhere: the same checks at toy size (CPU shims if no CUDA;
                                                       # the engine then runs on reference paged-attention kernels)

Without CUDA and without ``--dry-run`` it prints what it would do and exits 0, so it is import-safe in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import time
import traceback

import torch


def _report(status: str, name: str, detail: str = "") -> None:
    print(f"[{status}] {name}{': ' + detail if detail else ''}", flush=True)


def _init(seed: int):
    from nemo_smartpt.testing.distributed import free_port
    from nemo_smartpt.testing.megatron import init_model_parallel

    if not torch.cuda.is_available():
        from nemo_smartpt.runtime import apply_cpu_runtime

        apply_cpu_runtime()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=0, world_size=1)
    if torch.cuda.is_available():
        torch.cuda.set_device(0)
    init_model_parallel(1, 1, seed=seed)


def _gpt(sizes, dtype):
    from nemo_smartpt.testing.megatron import TinyGPTSpec, build_tiny_gpt, transformer_config

    spec = TinyGPTSpec(
        num_layers=sizes["layers"],
        hidden_size=sizes["hidden"],
        num_attention_heads=sizes["heads"],
        vocab_size=sizes["vocab"],
        seq_length=sizes["max_len"],
    )
    on_gpu = torch.cuda.is_available()
    config = transformer_config(
        spec, params_dtype=dtype, pipeline_dtype=dtype, bf16=dtype == torch.bfloat16, use_cpu_initialization=not on_gpu
    )
    model = build_tiny_gpt(spec, config=config)
    return model.cuda() if on_gpu else model


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def check_kv_equality(sizes) -> None:
    from nemo_smartpt.rlp.megatron.rollout import KVCacheSampler, NoCacheSampler

    model = _gpt(sizes, torch.float32)
    prompts = [torch.randint(0, sizes["vocab"] - 4, (n,)).tolist() for n in (17, 64)]
    kw = dict(max_new_tokens=sizes["thought"], stop_ids=(sizes["vocab"] - 2,), greedy=True)
    cached = KVCacheSampler(**kw).generate_groups(model, prompts, 4)
    naive = NoCacheSampler(**kw).generate_groups(model, prompts, 4)
    same = all(a.thoughts == b.thoughts for a, b in zip(cached, naive))
    _report("ok" if same else "fail", "KV-cache greedy == re-encoding", f"{len(prompts)} groups x 4")


def check_step(sizes, repeats: int, engine: str) -> None:
    from nemo_smartpt.rlp import ParamEMA, RLPConfig, ThoughtLayout
    from nemo_smartpt.rlp.megatron.logprobs import causal_mask, position_ids_like
    from nemo_smartpt.rlp.megatron.prepare import RLPPreparer
    from nemo_smartpt.rlp.megatron.step import rlp_forward, rlp_loss_func

    v = sizes["vocab"]
    model = _gpt(sizes, torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    device = next(model.parameters()).device
    layout = ThoughtLayout(prompt_ids=(v - 4,), think_open_ids=(v - 3,), think_close_ids=(v - 2,), pad_id=0)
    ek = _engine_kwargs(sizes)
    cfg = RLPConfig(
        num_rollouts=sizes["G"],
        max_thought_tokens=sizes["thought"],
        min_context=16,
        max_context=sizes["context"],
        generation_engine=engine,
        dynamic_block_size_tokens=ek["block_size_tokens"],
        dynamic_buffer_size_gb=ek["buffer_size_gb"],
    ).validate()
    prep = RLPPreparer(cfg, layout, eod_id=v - 1, ema=ParamEMA(cfg.ema_decay))
    tokens = torch.randint(0, v - 4, (sizes["samples"], sizes["seq"]))
    tokens[:, sizes["seq"] // 2] = v - 1  # two documents per sample

    def rlp_step(step):
        batch = prep.prepare(tokens, model, step=step)
        loss, count, _ = rlp_loss_func(cfg, batch, rlp_forward(batch, model))
        (loss / count.clamp(min=1)).backward()
        model.zero_grad(set_to_none=True)
        _sync()
        return int(batch["num_groups"])

    def ntp_step():
        x = tokens.to(device)
        inputs, labels = x[:, :-1], x[:, 1:]
        model(inputs, position_ids_like(inputs), causal_mask(inputs.shape[1], device), labels=labels).mean().backward()
        model.zero_grad(set_to_none=True)
        _sync()

    rlp_step(0)
    ntp_step()
    prep.stats.__init__()
    t0 = time.perf_counter()
    groups = sum(rlp_step(i + 1) for i in range(repeats))
    t_rlp = (time.perf_counter() - t0) / repeats
    t0 = time.perf_counter()
    for _ in range(repeats):
        ntp_step()
    t_ntp = (time.perf_counter() - t0) / repeats
    s = prep.stats
    train_s = t_rlp * repeats - s.generation_s - s.baseline_s
    docs = s.documents / repeats
    _report(
        "ok",
        f"RLP step ({engine})",
        f"{t_rlp * 1e3:.0f} ms/step ({groups / repeats:.0f} positions x G={cfg.num_rollouts}); generation "
        f"{s.generation_s / repeats * 1e3:.0f} ms ({s.generated_tokens / max(s.generation_s, 1e-9):.0f} tok/s), "
        f"baseline {s.baseline_s / repeats * 1e3:.0f} ms, training {train_s / repeats * 1e3:.0f} ms "
        f"({s.scoring_tokens / max(train_s, 1e-9):.0f} tok/s)",
    )
    ratio = (t_ntp / docs) / (t_rlp / (groups / repeats))
    _report(
        "ok", f"RLP vs NTP sample throughput ({engine})", f"{ratio:.3f}x (NTP {t_ntp * 1e3:.0f} ms/step; paper 0.44x)"
    )


def _engine_kwargs(sizes) -> dict:
    # flash-attn 2's paged kernels need blocks of 256 tokens; the CPU reference kernels take any size.
    return dict(
        block_size_tokens=256 if torch.cuda.is_available() else 8,
        buffer_size_gb=8.0 if torch.cuda.is_available() else 0.05,
        max_prompt_tokens=sizes["context"] + 8,
    )


def check_dynamic_engine(sizes) -> None:
    try:
        from nemo_smartpt.rlp.megatron.dynamic_rollout import DynamicEngineSampler
        from nemo_smartpt.rlp.megatron.rollout import KVCacheSampler, RolloutCounters
    except Exception as exc:  # import errors of optional GPU deps surface as many exception types
        _report("skip", "dynamic inference engine", f"not importable: {exc!r}"[:200])
        return
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = _gpt(sizes, dtype)
    v, G = sizes["vocab"], sizes["G"]
    gen = torch.Generator().manual_seed(4)
    prompts = [
        torch.randint(0, v - 4, (n,), generator=gen).tolist() for n in (sizes["context"] // 2, sizes["context"])
    ]
    stop = (v - 2,)
    greedy = dict(max_new_tokens=sizes["thought"], stop_ids=stop, temperature=1.0, greedy=True)
    dyn = DynamicEngineSampler(**greedy, **_engine_kwargs(sizes)).generate_groups(model, prompts, G)
    ref = KVCacheSampler(**greedy).generate_groups(model, prompts, G)
    pairs = [(a, b) for ga, gb in zip(dyn, ref) for ra, rb in zip(ga.thoughts, gb.thoughts) for a, b in zip(ra, rb)]
    agree = sum(a == b for a, b in pairs) / max(len(pairs), 1)
    first = all(ga.thoughts[i][:1] == gb.thoughts[i][:1] for ga, gb in zip(dyn, ref) for i in range(G))
    # bf16 kernels differ (flash-attn paged vs our static-cache attention): near-ties may flip later tokens.
    _report("ok" if first and agree >= 0.8 else "fail", "dynamic engine greedy vs KV cache", f"{agree:.3f} agree")

    def timed(sampler):
        sampler.generate_groups(model, prompts, G, torch.Generator(device=_device()).manual_seed(0))  # warm-up
        _sync()
        t0 = time.perf_counter()
        groups = sampler.generate_groups(model, prompts, G, torch.Generator(device=_device()).manual_seed(1))
        _sync()
        return time.perf_counter() - t0, sum(len(t) for g in groups for t in g.thoughts)

    sampled = dict(max_new_tokens=sizes["thought"], stop_ids=stop, temperature=0.7)
    c_dyn, c_kv = RolloutCounters(), RolloutCounters()
    t_dyn, n_dyn = timed(DynamicEngineSampler(**sampled, counters=c_dyn, **_engine_kwargs(sizes)))
    t_kv, n_kv = timed(KVCacheSampler(**sampled, counters=c_kv))
    _report(
        "ok",
        "dynamic engine vs KV-cache sampler (sampled)",
        f"speed-up {t_kv / t_dyn:.2f}x (KV-cache time / engine time: {t_kv * 1e3:.0f} / {t_dyn * 1e3:.0f} ms per "
        f"batch; {n_kv / t_kv:.0f} vs {n_dyn / t_dyn:.0f} tok/s; the prefix cache served "
        f"{c_dyn.prefix_cached_tokens // 2} prompt tokens per batch)",
    )


def check_hybrid(sizes) -> None:
    try:
        import mamba_ssm  # noqa: F401
        from megatron.core.models.hybrid.hybrid_layer_specs import hybrid_stack_spec
        from megatron.core.models.hybrid.hybrid_model import HybridModel
    except Exception as exc:
        _report("skip", "hybrid Mamba model", f"needs mamba_ssm and Transformer Engine: {exc!r}"[:200])
        return
    from nemo_smartpt.rlp import ParamEMA, RLPConfig, ThoughtLayout
    from nemo_smartpt.rlp.megatron.prepare import RLPPreparer
    from nemo_smartpt.rlp.megatron.step import rlp_forward, rlp_loss_func
    from nemo_smartpt.testing.megatron import TinyGPTSpec, transformer_config

    v = sizes["vocab"]
    spec = TinyGPTSpec(num_layers=4, hidden_size=256, num_attention_heads=4, vocab_size=v, seq_length=sizes["max_len"])
    config = transformer_config(spec, params_dtype=torch.bfloat16, pipeline_dtype=torch.bfloat16, bf16=True)
    model = HybridModel(
        config, hybrid_stack_spec, vocab_size=v, max_sequence_length=spec.seq_length, hybrid_layer_pattern="M*M*"
    ).cuda()
    layout = ThoughtLayout(prompt_ids=(v - 4,), think_open_ids=(v - 3,), think_close_ids=(v - 2,), pad_id=0)
    # The engine holds Mamba states per request; without flash-attn, re-encoding is the generation path left.
    engine = "dynamic" if importlib.util.find_spec("flash_attn") is not None else "kv_cache"
    cfg = RLPConfig(
        num_rollouts=4, max_thought_tokens=16, min_context=16, max_context=64, generation_engine=engine
    ).validate()
    prep = RLPPreparer(cfg, layout, eod_id=v - 1, ema=ParamEMA())
    if engine == "kv_cache":
        from nemo_smartpt.rlp.megatron.rollout import NoCacheSampler

        prep.sampler = NoCacheSampler(cfg.max_thought_tokens, layout.think_close_ids, cfg.temperature)
    t0 = time.perf_counter()
    batch = prep.prepare(torch.randint(0, v - 4, (1, 128)), model, step=0)
    loss, count, metrics = rlp_loss_func(cfg, batch, rlp_forward(batch, model))
    loss.backward()
    torch.cuda.synchronize()
    ok = torch.isfinite(loss) and all(torch.isfinite(m).all() for m in metrics.values())
    detail = (
        f"{(time.perf_counter() - t0) * 1e3:.0f} ms, G=4, prefix cache served {prep.counters.prefix_cached_tokens}"
    )
    label = "dynamic engine" if engine == "dynamic" else "re-encoding sampler: no flash-attn"
    _report("ok" if ok else "fail", f"hybrid Mamba RLP step ({label})", detail)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="run every check at toy size (CPU allowed)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if not torch.cuda.is_available() and not args.dry_run:
        print("no CUDA device: would run KV equality, a bf16 RLP step, engine and hybrid checks. Use --dry-run.")
        return 0
    big = dict(layers=12, hidden=1024, heads=16, vocab=32000, seq=1024, samples=4, G=16, thought=256, context=512)
    toy = dict(layers=2, hidden=64, heads=4, vocab=256, seq=128, samples=2, G=4, thought=8, context=32)
    sizes = toy if args.dry_run else big
    sizes["max_len"] = sizes["seq"] + sizes["thought"] + sizes["context"] + 8
    _init(seed=1)
    _report("ok", "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (dry run)")
    kernels = contextlib.ExitStack()
    if not torch.cuda.is_available():
        from nemo_smartpt.testing.paged_attention import install_reference_paged_attention

        kernels.enter_context(install_reference_paged_attention())  # the dry run's stand-in for flash-attn
    # The engine's attention kernels: flash-attn on a GPU (the NGC image has it; a bare CUDA image may not).
    engine_ready = not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is not None
    checks = [
        ("KV-cache equality", lambda: check_kv_equality(sizes)),
        ("dynamic engine", lambda: check_dynamic_engine(sizes)),
        ("RLP step (kv_cache)", lambda: check_step(sizes, args.repeats, "kv_cache")),
        ("RLP step (dynamic)", lambda: check_step(sizes, args.repeats, "dynamic")),
    ]
    for name, check in checks:
        if "dynamic" in name and not engine_ready:
            _report("skip", name, "flash-attn is not installed (the dynamic engine's kernels)")
            continue
        try:
            check()
        except Exception as exc:  # report and go on: one lent GPU run should say as much as it can
            traceback.print_exc()
            _report("fail", name, repr(exc)[:300])
    if torch.cuda.is_available():
        try:
            check_hybrid(sizes)
        except Exception as exc:
            _report("fail", "hybrid Mamba RLP step", repr(exc)[:300])
    else:
        _report("skip", "hybrid Mamba model", "needs CUDA")
    kernels.close()
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
