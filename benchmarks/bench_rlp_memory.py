"""Benchmark: peak memory of one RLP training step with a 131,072-entry vocabulary on CPU, before/after, vs next-token.

Three variants of the same micro-batch (B positions × G thoughts, prepared rows of L tokens, megatron-core's GPTModel
with the local spec), each forward + backward in a fresh process so that one's allocations cannot hide another's:

- ``ntp``: a next-token step over the same ``[N, L]`` tokens (``GPTModel(..., labels=...)``, Megatron's loss);
- ``rlp_full``: the RLP loss from full logits ``[N, L, V]`` (the path before this change, kept as the reference);
- ``rlp``: the RLP loss from logits at the scored positions only, ``rlp.logits_chunk_tokens`` positions at a time.

Peak memory = the process's peak resident set size during the step minus its resident size just before it
(``ru_maxrss`` and ``/proc/self/statm``; large tensors are mmapped by the allocator, so RSS follows them). The
numbers printed are MB and the ratios the issue asks for (rlp / rlp_full and rlp / ntp).

Usage::

    python benchmarks/bench_rlp_memory.py                    # vocab 131072, B=2, G=8, context 64, thought 60
    python benchmarks/bench_rlp_memory.py --chunk 256 --json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

VARIANTS = ("ntp", "rlp_full", "rlp")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _batch(args):
    import torch

    from nemo_smartpt.rlp.prompt import ThoughtLayout, build_scoring_group, flat_scoring_batch, stack_groups

    V = args.vocab
    layout = ThoughtLayout(prompt_ids=(), think_open_ids=(V - 3,), think_close_ids=(V - 2,), pad_id=0)
    gen = torch.Generator().manual_seed(0)
    groups = []
    for _ in range(args.positions):
        ctx = torch.randint(0, V - 4, (args.context,), generator=gen).tolist()
        thoughts = [torch.randint(0, V - 4, (args.thought,), generator=gen).tolist() for _ in range(args.rollouts)]
        groups.append(build_scoring_group(layout, ctx, thoughts, 7, args.thought + 1))
    st = stack_groups(groups)
    B, G, L = st["input_ids_BGL"].shape
    N = B * G
    return flat_scoring_batch(st, s_ema_B=torch.zeros(B)) | {"position_ids_NL": torch.arange(L).expand(N, L)}


def run_variant(args) -> dict:
    """One variant in this process: build, measure RSS, one forward + backward, return the peak growth."""
    import torch

    from nemo_smartpt.rlp.config import RLPConfig
    from nemo_smartpt.rlp.megatron.logprobs import causal_mask
    from nemo_smartpt.rlp.megatron.step import logprobs_from_logits, rlp_forward, rlp_loss_func
    from nemo_smartpt.testing.megatron import TinyGPTSpec, single_process_tiny_gpt

    torch.set_num_threads(1)
    batch = _batch(args)
    N, L = batch["input_ids_NL"].shape
    spec = TinyGPTSpec(
        num_layers=args.layers, hidden_size=args.hidden, num_attention_heads=4, vocab_size=args.vocab, seq_length=L
    )
    model = single_process_tiny_gpt(spec, seed=0)
    cfg = RLPConfig(num_rollouts=args.rollouts, logits_chunk_tokens=args.chunk)
    before = _rss_bytes()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if args.variant == "ntp":
        loss = model(batch["input_ids_NL"], batch["position_ids_NL"], causal_mask(L), labels=batch["labels_NL"])
        loss.sum().backward()
    elif args.variant == "rlp_full":
        logp = logprobs_from_logits(cfg, batch, rlp_forward(batch, model))
        rlp_loss_func(cfg, batch, logp)[0].backward()
    else:
        rlp_loss_func(cfg, batch, rlp_forward(batch, model, cfg))[0].backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if peak <= peak_before:
        raise RuntimeError("the step did not raise the process's peak RSS above its set-up peak; use a larger batch")
    return {"variant": args.variant, "tokens": N * L, "peak_mb": (peak - before) / 2**20}


def estimate_table() -> str:
    """:func:`nemo_smartpt.rlp.memory.paper_table` as markdown (full activation recomputation, and without)."""
    from nemo_smartpt.rlp.memory import paper_table

    lines = [
        "| model | vocab | TP | recompute | weights+Adam | EMA | activations | generation KV | RLP peak | "
        "RLP peak, full logits | NTP peak, same tokens |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for recompute in (True, False):
        for r in paper_table(recompute=recompute):
            lines.append(
                f"| {r['model']} | {r['vocab']:,} | {r['tp']} | {'full' if recompute else 'none'} | "
                f"{r['weights+optimizer GB']:.1f} | {r['ema GB']:.1f} | {r['activations GB']:.1f} | "
                f"{r['generation GB']:.1f} | **{r['rlp peak GB']:.1f}** | {r['rlp full-logits peak GB']:.1f} | "
                f"{r['ntp peak GB']:.1f} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=131072)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--positions", type=int, default=2, help="B, target positions in the micro-batch")
    p.add_argument("--rollouts", type=int, default=8, help="G")
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--thought", type=int, default=60)
    p.add_argument("--chunk", type=int, default=256, help="rlp.logits_chunk_tokens")
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--estimate",
        action="store_true",
        help="print the accounting's table at the paper's shapes (markdown) and exit",
    )
    args = p.parse_args(argv)
    if args.estimate:
        print(estimate_table())
        return 0
    if args.variant:
        print(json.dumps(run_variant(args)))
        return 0
    results = {}
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--json"]
    for variant in VARIANTS:
        out = subprocess.run(
            [sys.executable, __file__, *forwarded, "--variant", variant], capture_output=True, text=True, check=True
        )
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    mb = {v: results[v]["peak_mb"] for v in VARIANTS}
    summary = {
        "vocab": args.vocab,
        "tokens per micro-batch": results["rlp"]["tokens"],
        "chunk": args.chunk,
        "peak MB": mb,
        "rlp / rlp_full (after / before)": mb["rlp"] / mb["rlp_full"],
        "rlp / ntp": mb["rlp"] / mb["ntp"],
        "rlp_full / ntp": mb["rlp_full"] / mb["ntp"],
    }
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
