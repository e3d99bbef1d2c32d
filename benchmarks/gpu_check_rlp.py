"""GPU check of the Megatron RLP step, for a lent H100/H200 (one GPU, NCCL world of 1, bf16), in one JSON object.

The model is a Llama-family decoder (RoPE, GQA, SwiGLU, RMSNorm, untied output layer) built from megatron-core's
Transformer Engine spec when TE imports (the local spec otherwise): on a GPU the 1B shape (Llama 3.2 1B: width 2048,
16 layers, 32 heads / 8 KV heads, FFN 8192) with a 128K vocabulary (131,072), G = 16 and 1024-token thoughts and
contexts. Checks (each also printed as ``[ok]``/``[fail]``/``[skip]`` on stderr):

1. ``kv_equality``: KV-cache greedy generation equals re-encoding, token for token (fp32 weights: bf16 kernels may
   break exact ties).
2. ``dynamic_engine``: megatron-core's dynamic inference engine (flash-attn paged kernels, prefix caching) against our
   KV-cache sampler in bf16: greedy token agreement, and sampled generation time of the same groups, as a ratio.
3. ``step_kv_cache`` / ``step_dynamic``: one RLP step (positions, G rollouts, EMA baseline, training forward +
   backward) with each generation engine: time split, tokens/s, and the sample throughput vs a next-token step on the
   same samples (the paper's stack: 0.44x; our goal: at least 0.6x).
4. ``memory``: peak GPU memory of the RLP training forward + backward at G = 16 rows of ``context + thought`` tokens
   against :func:`nemo_smartpt.rlp.memory.step_memory`'s estimate of the same micro-batch (activations, gathered
   hidden states, one logits chunk), and the same for a next-token step on the same tokens (full logits).
5. ``shared_prefix``: the training forward + backward time with ``rlp.shared_prefix_forward`` on vs off, when this
   build has that setting (skipped otherwise).
6. ``hybrid``: a hybrid Mamba model (megatron-core ``HybridModel``) when ``mamba_ssm`` and TE import.

Usage (copy the repo with megatron-core / megatron-bridge wheels on the GPU machine)::

    python benchmarks/gpu_check_rlp.py                 # on a CUDA machine; prints one JSON object on stdout
    python benchmarks/gpu_check_rlp.py --dry-run       # anywhere: the same checks at toy size (CPU shims if no CUDA;
                                                       # the engine then runs on reference paged-attention kernels)

Without CUDA and without ``--dry-run`` it prints what it would do and exits 0, so it is import-safe in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import sys
import time
import traceback

import torch

RESULTS: dict = {}


def _report(status: str, name: str, detail: str = "", key: str | None = None, **numbers) -> None:
    """One check's line on stderr, and its status and numbers in the JSON object printed at the end."""
    print(f"[{status}] {name}{': ' + detail if detail else ''}", file=sys.stderr, flush=True)
    entry = RESULTS.setdefault(key or name, {})
    entry.update({"status": status, "name": name, **({"detail": detail} if detail else {}), **numbers})


def _init(seed: int):
    from nemo_smartpt.testing.megatron import init_single_process

    if torch.cuda.is_available():
        torch.cuda.set_device(0)
    else:
        from nemo_smartpt.runtime import apply_cpu_runtime

        apply_cpu_runtime()
    init_single_process(seed=seed, backend="nccl" if torch.cuda.is_available() else "gloo")


def _gpt(sizes, dtype):
    """A Llama-family decoder: RoPE, GQA, SwiGLU, RMSNorm, untied output layer (TE spec when TE imports)."""
    from megatron.core.models.gpt import GPTModel

    from nemo_smartpt.testing.megatron import TinyGPTSpec, transformer_config

    spec = TinyGPTSpec(
        num_layers=sizes["layers"],
        hidden_size=sizes["hidden"],
        num_attention_heads=sizes["heads"],
        vocab_size=sizes["vocab"],
        seq_length=sizes["max_len"],
        ffn_hidden_size=sizes["ffn"],
        family="llama",
        num_query_groups=sizes["kv_heads"],
    )
    on_gpu = torch.cuda.is_available()
    config = transformer_config(
        spec,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        use_cpu_initialization=not on_gpu,
    )
    model = GPTModel(
        config=config,
        transformer_layer_spec=_layer_spec(),
        vocab_size=spec.vocab_size,
        max_sequence_length=spec.seq_length,
        position_embedding_type="rope",
        share_embeddings_and_output_weights=False,
    )
    return model.cuda() if on_gpu else model


def _layer_spec():
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    if torch.cuda.is_available() and importlib.util.find_spec("transformer_engine") is not None:
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec()
    return get_gpt_layer_local_spec(normalization="RMSNorm")


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
    _report(
        "ok" if same else "fail", "KV-cache greedy == re-encoding", f"{len(prompts)} groups x 4", key="kv_equality"
    )


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
    for k in range(1, sizes["docs"]):
        tokens[:, k * sizes["seq"] // sizes["docs"]] = v - 1  # documents per sample

    def rlp_step(step):
        batch = prep.prepare(tokens, model, step=step)
        loss, count, _ = rlp_loss_func(cfg, batch, rlp_forward(batch, model, cfg))
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
        key=f"step_{engine}",
        step_ms=t_rlp * 1e3,
        generation_ms=s.generation_s / repeats * 1e3,
        training_ms=train_s / repeats * 1e3,
        detail=f"{t_rlp * 1e3:.0f} ms/step ({groups / repeats:.0f} positions x G={cfg.num_rollouts}); generation "
        f"{s.generation_s / repeats * 1e3:.0f} ms ({s.generated_tokens / max(s.generation_s, 1e-9):.0f} tok/s), "
        f"baseline {s.baseline_s / repeats * 1e3:.0f} ms, training {train_s / repeats * 1e3:.0f} ms "
        f"({s.scoring_tokens / max(train_s, 1e-9):.0f} tok/s)",
    )
    ratio = (t_ntp / docs) / (t_rlp / (groups / repeats))
    _report(
        "ok",
        f"RLP vs NTP sample throughput ({engine})",
        f"{ratio:.3f}x (NTP {t_ntp * 1e3:.0f} ms/step; paper 0.44x, goal >= 0.6x)",
        key=f"step_{engine}",
        rlp_vs_ntp_sample_throughput=ratio,
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
        _report("skip", "dynamic inference engine", f"not importable: {exc!r}"[:200], key="dynamic_engine")
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
    _report(
        "ok" if first and agree >= 0.8 else "fail",
        "dynamic engine greedy vs KV cache",
        f"{agree:.3f} agree",
        key="dynamic_engine",
        greedy_agreement=agree,
    )

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
        key="dynamic_engine",
        engine_speedup=t_kv / t_dyn,
        engine_tokens_per_s=n_dyn / t_dyn,
        kv_cache_tokens_per_s=n_kv / t_kv,
        detail=f"speed-up {t_kv / t_dyn:.2f}x (KV-cache time / engine time: {t_kv * 1e3:.0f} / {t_dyn * 1e3:.0f} ms per "
        f"batch; {n_kv / t_kv:.0f} vs {n_dyn / t_dyn:.0f} tok/s; the prefix cache served "
        f"{c_dyn.prefix_cached_tokens // 2} prompt tokens per batch)",
    )


def _scoring_batch(sizes, device):
    """One prepared micro-batch of G rows ``<think> thought </think> x_t`` after a context (random tokens)."""
    from nemo_smartpt.rlp.prompt import ThoughtLayout, build_scoring_group, flat_scoring_batch, stack_groups

    v, G = sizes["vocab"], sizes["G"]
    layout = ThoughtLayout(prompt_ids=(), think_open_ids=(v - 3,), think_close_ids=(v - 2,), pad_id=0)
    gen = torch.Generator().manual_seed(0)
    ctx = torch.randint(0, v - 4, (sizes["context"],), generator=gen).tolist()
    thoughts = [torch.randint(0, v - 4, (sizes["thought"],), generator=gen).tolist() for _ in range(G)]
    st = stack_groups([build_scoring_group(layout, ctx, thoughts, 7, sizes["thought"] + 1)])
    N, L = G, st["input_ids_BGL"].shape[-1]
    batch = flat_scoring_batch(st, s_ema_B=torch.zeros(1)) | {"position_ids_NL": torch.arange(L).expand(N, L)}
    return {k: v.to(device) for k, v in batch.items()}


def _peak_bytes(fn) -> float | None:
    """Peak GPU memory allocated by ``fn`` above what was allocated before it (None on CPU: no allocator stats)."""
    if not torch.cuda.is_available():
        fn()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return float(torch.cuda.max_memory_allocated() - base)


def check_memory(sizes) -> None:
    from nemo_smartpt.rlp import RLPConfig
    from nemo_smartpt.rlp.megatron.logprobs import causal_mask
    from nemo_smartpt.rlp.megatron.step import rlp_forward, rlp_loss_func
    from nemo_smartpt.rlp.memory import DecoderShape, StepShape, step_memory

    on_gpu = torch.cuda.is_available()
    model = _gpt(sizes, torch.bfloat16 if on_gpu else torch.float32)
    device = next(model.parameters()).device
    batch = _scoring_batch(sizes, device)
    cfg = RLPConfig(num_rollouts=sizes["G"], logits_chunk_tokens=sizes["chunk"]).validate()
    N, L = batch["input_ids_NL"].shape

    def rlp():
        rlp_loss_func(cfg, batch, rlp_forward(batch, model, cfg))[0].backward()

    def ntp():
        model(
            batch["input_ids_NL"], batch["position_ids_NL"], causal_mask(L, device), labels=batch["labels_NL"]
        ).sum().backward()

    params = sum(p.numel() for p in model.parameters())
    measured = {}
    for name, fn in (("rlp", rlp), ("ntp", ntp)):
        model.zero_grad(set_to_none=True)
        measured[name] = _peak_bytes(fn)
    model.zero_grad(set_to_none=True)
    shape = DecoderShape(
        "check", sizes["hidden"], sizes["layers"], sizes["ffn"], sizes["heads"], sizes["kv_heads"], sizes["vocab"]
    )
    step = StepShape(
        rollouts=sizes["G"], context=sizes["context"], thought=sizes["thought"], logits_chunk=sizes["chunk"]
    )
    est = step_memory(shape, step, tp=1, recompute=False)
    grads_gb = 2.0 * params / 1e9  # the bf16 .grad tensors backward allocates (no DDP buffers in this check)
    est_rlp, est_ntp = est["rlp training GB"] + grads_gb, est["ntp training GB"] + grads_gb
    if measured["rlp"] is None:
        _report("ok", "RLP step peak memory", f"cpu dry run ({N}x{L} tokens): code path only", key="memory")
        return
    rlp_gb, ntp_gb = measured["rlp"] / 1e9, measured["ntp"] / 1e9
    _report(
        "ok",
        "RLP step peak memory",
        f"RLP {rlp_gb:.1f} GB (estimate {est_rlp:.1f}), NTP on the same {N * L} tokens {ntp_gb:.1f} GB "
        f"(estimate {est_ntp:.1f}); RLP / NTP {rlp_gb / ntp_gb:.2f}",
        key="memory",
        rlp_peak_gb=rlp_gb,
        rlp_estimate_gb=est_rlp,
        ntp_peak_gb=ntp_gb,
        ntp_estimate_gb=est_ntp,
        rlp_over_ntp=rlp_gb / ntp_gb,
        tokens=N * L,
    )


def check_shared_prefix(sizes, repeats: int) -> None:
    from nemo_smartpt.rlp import RLPConfig
    from nemo_smartpt.rlp.megatron.step import rlp_forward, rlp_loss_func

    if "shared_prefix_forward" not in {f.name for f in dataclasses.fields(RLPConfig)}:
        _report(
            "skip",
            "shared-prefix training forward",
            "rlp.shared_prefix_forward is not in this build",
            key="shared_prefix",
        )
        return
    on_gpu = torch.cuda.is_available()
    model = _gpt(sizes, torch.bfloat16 if on_gpu else torch.float32)
    batch = _scoring_batch(sizes, next(model.parameters()).device)
    times = {}
    for shared in (False, True):
        cfg = RLPConfig(num_rollouts=sizes["G"], logits_chunk_tokens=sizes["chunk"], shared_prefix_forward=shared)
        for k in range(repeats + 1):  # the first is a warm-up
            _sync()
            t0 = time.perf_counter()
            rlp_loss_func(cfg, batch, rlp_forward(batch, model, cfg))[0].backward()
            model.zero_grad(set_to_none=True)
            _sync()
            if k:
                times[shared] = times.get(shared, 0.0) + (time.perf_counter() - t0) / repeats
    speedup = times[False] / times[True]
    _report(
        "ok",
        "shared-prefix training forward",
        f"{speedup:.2f}x (per-row {times[False] * 1e3:.0f} ms, shared {times[True] * 1e3:.0f} ms; goal >= 1.5x)",
        key="shared_prefix",
        speedup=speedup,
    )


def check_hybrid(sizes) -> None:
    try:
        import mamba_ssm  # noqa: F401
        from megatron.core.models.hybrid.hybrid_layer_specs import hybrid_stack_spec
        from megatron.core.models.hybrid.hybrid_model import HybridModel
    except Exception as exc:
        _report("skip", "hybrid Mamba model", f"needs mamba_ssm and Transformer Engine: {exc!r}"[:200], key="hybrid")
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
    loss, count, metrics = rlp_loss_func(cfg, batch, rlp_forward(batch, model, cfg))
    loss.backward()
    torch.cuda.synchronize()
    ok = torch.isfinite(loss) and all(torch.isfinite(m).all() for m in metrics.values())
    detail = (
        f"{(time.perf_counter() - t0) * 1e3:.0f} ms, G=4, prefix cache served {prep.counters.prefix_cached_tokens}"
    )
    label = "dynamic engine" if engine == "dynamic" else "re-encoding sampler: no flash-attn"
    _report("ok" if ok else "fail", f"hybrid Mamba RLP step ({label})", detail, key="hybrid")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="run every check at toy size (CPU allowed)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if not torch.cuda.is_available() and not args.dry_run:
        print("no CUDA device: would run KV equality, a bf16 RLP step, engine and hybrid checks. Use --dry-run.")
        return 0
    # The 1B Llama shape at the paper's G and half its lengths (1024-token thoughts and contexts), 128K vocabulary.
    big = dict(
        layers=16,
        hidden=2048,
        heads=32,
        kv_heads=8,
        ffn=8192,
        vocab=131072,
        seq=1100,
        samples=1,
        docs=1,
        G=16,
        thought=1024,
        context=1024,
        chunk=1024,
    )
    toy = dict(
        layers=2,
        hidden=64,
        heads=4,
        kv_heads=2,
        ffn=128,
        vocab=256,
        seq=128,
        samples=2,
        docs=2,
        G=4,
        thought=8,
        context=32,
        chunk=16,
    )
    sizes = toy if args.dry_run else big
    sizes["max_len"] = sizes["seq"] + sizes["thought"] + sizes["context"] + 8
    _init(seed=1)
    _report(
        "ok", "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (dry run)", key="device"
    )
    RESULTS["sizes"] = dict(sizes)
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
        ("RLP step peak memory", lambda: check_memory(sizes)),
        ("shared-prefix training forward", lambda: check_shared_prefix(sizes, args.repeats)),
    ]
    for name, check in checks:
        if "dynamic" in name and not engine_ready:
            _report("skip", name, "flash-attn is not installed (the dynamic engine's kernels)", key=name)
            continue
        try:
            check()
        except Exception as exc:  # report and go on: one lent GPU run should say as much as it can
            traceback.print_exc()
            _report("fail", name, repr(exc)[:300], key=name)
    if torch.cuda.is_available():
        try:
            check_hybrid(sizes)
        except Exception as exc:
            _report("fail", "hybrid Mamba RLP step", repr(exc)[:300], key="hybrid")
    else:
        _report("skip", "hybrid Mamba model", "needs CUDA", key="hybrid")
    kernels.close()
    torch.distributed.destroy_process_group()
    print(json.dumps(RESULTS), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
