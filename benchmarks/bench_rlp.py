"""Benchmark: one RLP step on a tiny megatron-core GPT on CPU (arXiv 2510.01265 reports RLP at 0.44x SFT throughput).

Two comparisons, same model, same packed documents, same RNG:

1. **Shared-prefix rollouts vs naive**: a full RLP step (positions, G rollouts per position, EMA baseline, training
   forward + backward) with the KV-cache sampler (context prefilled once per group, G rows decoded over the shared
   cache) vs the same step whose sampler re-encodes context + thought-so-far for all G rows at every token.
2. **RLP vs next-token prediction**: RLP step time per document vs a next-token forward + backward over the same
   packed samples, as a sample-throughput ratio to set beside the paper's 0.44x (their HF stack, 32 H100, G=16,
   2048-token thoughts; ours is a tiny CPU model with short thoughts, so the ratio is a shape check, not a prediction).

The FLOP split of the measured step (generation / training / baseline) and its NTP-token equivalent are printed too.

Usage::

    python benchmarks/bench_rlp.py                       # defaults: 4 layers, width 128, G=8, 32-token thoughts
    python benchmarks/bench_rlp.py --rollouts 16 --thought 64 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def _setup(args):
    from nemo_smartpt.testing.megatron import TinyGPTSpec, single_process_tiny_gpt

    spec = TinyGPTSpec(
        num_layers=args.layers,
        hidden_size=args.hidden,
        num_attention_heads=args.heads,
        vocab_size=args.vocab,
        seq_length=max(args.seq, 2 + args.context + args.thought + 2),
    )
    return single_process_tiny_gpt(spec, seed=args.seed)


def _documents(args) -> torch.Tensor:
    """``[b, S]`` packed samples, ``args.docs_per_sample`` documents each (EOD = vocab − 1)."""
    gen = torch.Generator().manual_seed(args.seed)
    eod = args.vocab - 1
    tokens = torch.randint(0, args.vocab - 4, (args.samples, args.seq), generator=gen)
    doc_len = args.seq // args.docs_per_sample
    for k in range(1, args.docs_per_sample):
        tokens[:, k * doc_len - 1] = eod
    return tokens


def _rlp_step(model, preparer, tokens, cfg, step):
    from nemo_smartpt.rlp.megatron.step import rlp_forward, rlp_loss_func

    batch = preparer.prepare(tokens, model, step=step)
    loss, count, _ = rlp_loss_func(cfg, batch, rlp_forward(batch, model, cfg))
    (loss / count.clamp(min=1)).backward()
    model.zero_grad(set_to_none=True)
    return int(batch["num_groups"])


def _ntp_step(model, tokens):
    from nemo_smartpt.rlp.megatron.logprobs import causal_mask, position_ids_like

    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    loss = model(inputs, position_ids_like(inputs), causal_mask(inputs.shape[1]), labels=labels).mean()
    loss.backward()
    model.zero_grad(set_to_none=True)


def _best(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times), out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--seq", type=int, default=256, help="packed-sample length")
    p.add_argument("--samples", type=int, default=2, help="packed samples per step")
    p.add_argument("--docs-per-sample", type=int, default=2)
    p.add_argument("--rollouts", type=int, default=8)
    p.add_argument("--thought", type=int, default=32)
    p.add_argument("--context", type=int, default=96)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    from nemo_smartpt.rlp import ParamEMA, RLPConfig, ThoughtLayout
    from nemo_smartpt.rlp.flops import ntp_flops_per_token, rlp_step_flops
    from nemo_smartpt.rlp.megatron.callbacks import model_flops_spec
    from nemo_smartpt.rlp.megatron.prepare import RLPPreparer
    from nemo_smartpt.rlp.megatron.rollout import NoCacheSampler

    model = _setup(args)
    tokens = _documents(args)
    v = args.vocab
    # A never-sampled close tag would make every thought run to the limit: close = a real token, so lengths vary.
    layout = ThoughtLayout(prompt_ids=(v - 4,), think_open_ids=(v - 3,), think_close_ids=(v - 2,), pad_id=0)
    cfg = RLPConfig(
        num_rollouts=args.rollouts,
        max_thought_tokens=args.thought,
        min_context=16,
        max_context=args.context,
        seed=args.seed,
    ).validate()

    def preparer(naive: bool):
        prep = RLPPreparer(cfg, layout, eod_id=v - 1, ema=ParamEMA(cfg.ema_decay))
        if naive:
            prep.sampler = NoCacheSampler(
                cfg.max_thought_tokens, layout.think_close_ids, cfg.temperature, counters=prep.counters
            )
        return prep

    cached, naive = preparer(False), preparer(True)
    _rlp_step(model, cached, tokens, cfg, 0)  # warm-up (allocations, first-call overheads)
    t_cached, med_cached, groups = _best(lambda: _rlp_step(model, cached, tokens, cfg, 0), args.repeats)
    t_naive, med_naive, _ = _best(lambda: _rlp_step(model, naive, tokens, cfg, 0), args.repeats)
    _ntp_step(model, tokens)
    t_ntp, med_ntp, _ = _best(lambda: _ntp_step(model, tokens), args.repeats)

    stats = cached.stats
    docs = stats.documents / (args.repeats + 1)
    print(
        f"model: {args.layers} layers, width {args.hidden}, vocab {v}; step: {args.samples}x{args.seq} packed tokens, "
        f"{groups} positions x G={args.rollouts}, thoughts <= {args.thought}, context <= {args.context}"
    )
    print(f"mean thought length {stats.generated_tokens / max(stats.positions * args.rollouts, 1):.1f} tokens")
    print(f"RLP step, shared-prefix KV cache : {t_cached * 1e3:8.1f} ms (median {med_cached * 1e3:.1f})")
    print(f"RLP step, naive re-encoding      : {t_naive * 1e3:8.1f} ms (median {med_naive * 1e3:.1f})")
    print(f"  -> naive / shared-prefix       : {t_naive / t_cached:.2f}x")
    rlp_per_doc = t_cached / groups
    ntp_per_doc = t_ntp / docs
    print(f"NTP step (fwd+bwd, same samples) : {t_ntp * 1e3:8.1f} ms for {docs:.0f} documents")
    print(
        f"per document: RLP {rlp_per_doc * 1e3:.1f} ms vs NTP {ntp_per_doc * 1e3:.1f} ms -> RLP sample throughput "
        f"{ntp_per_doc / rlp_per_doc:.3f}x of NTP (paper, HF stack on H100: 0.44x)"
    )

    spec = model_flops_spec(model)
    n_steps = args.repeats + 1
    B = stats.positions / n_steps
    flops = rlp_step_flops(
        spec,
        num_positions=B,
        num_rollouts=args.rollouts,
        rollout_prefix_tokens=stats.rollout_prompt_tokens / stats.positions,
        thought_tokens=stats.generated_tokens / (stats.positions * args.rollouts),
        baseline_tokens=stats.baseline_tokens / stats.positions,
    )
    total = flops.total
    print(
        f"FLOPs per RLP step: generation {flops.generation:.3e} ({flops.generation / total:.0%}), training "
        f"{flops.training:.3e} ({flops.training / total:.0%}), baseline {flops.baseline:.3e} "
        f"({flops.baseline / total:.0%}); NTP-equivalent tokens {total / ntp_flops_per_token(spec, args.seq):.0f} "
        f"vs {args.samples * args.seq} tokens of an NTP step"
    )
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
