"""Benchmark: the RLP training forward + backward, grouped (``rlp.shared_prefix_forward``) vs per-row, on CPU.

The paper's shape ratio scaled down: context : thought = 1 : 1 and G = 16 thoughts per position (the paper: 2048-token
contexts, thoughts up to 2048 tokens, G = 16). One prepared micro-batch of B groups is assembled with the same helpers
the preparer uses (``build_scoring_group`` → ``stack_groups`` → ``shared_prefix_batch``), with every thought exactly
``--thought`` tokens long (closed by ``</think>``), so both layouts get identical rows; then the RLP loss forward +
backward runs on megatron-core's GPTModel (local spec) in each layout. Printed: best-of-``--repeats`` wall time,
tokens through the linear layers, model FLOPs of the training forward + backward from the project's accounting
(``nemo_smartpt.rlp.flops``, causal attention) and as executed (dense score blocks), each as grouped : per-row ratios,
and the largest loss / gradient difference between the layouts.

Usage::

    python benchmarks/bench_rlp_shared_prefix.py                    # P = R = 64, G = 16, B = 2, 2 layers, width 128
    python benchmarks/bench_rlp_shared_prefix.py --context 128 --thought 128 --hidden 256 --layers 4
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def _setup(args):
    from nemo_smartpt.testing.megatron import TinyGPTSpec, single_process_tiny_gpt

    spec = TinyGPTSpec(
        num_layers=args.layers,
        hidden_size=args.hidden,
        num_attention_heads=args.heads,
        vocab_size=args.vocab,
        seq_length=args.context + args.thought + 4,
    )
    return single_process_tiny_gpt(spec, seed=args.seed)


def _batch(args):
    """One prepared micro-batch with both layouts: B groups, prefix ``P x_<t <think>`` of ``--context`` tokens."""
    from nemo_smartpt.rlp.prompt import ThoughtLayout, build_scoring_group, flat_scoring_batch, stack_groups
    from nemo_smartpt.rlp.shared_prefix import shared_prefix_batch

    V = args.vocab
    layout = ThoughtLayout(prompt_ids=(V - 4,), think_open_ids=(V - 3,), think_close_ids=(V - 2,), pad_id=0)
    gen = torch.Generator().manual_seed(args.seed)
    context_len = args.context - 2  # prompt and <think> complete the prefix
    scoring, G = [], args.rollouts
    for _ in range(args.groups):
        context = torch.randint(1, V - 5, (context_len,), generator=gen).tolist()
        thoughts = [torch.randint(1, V - 5, (args.thought - 1,), generator=gen).tolist() + [V - 2] for _ in range(G)]
        target = int(torch.randint(1, V - 5, (1,), generator=gen))
        scoring.append(build_scoring_group(layout, context, thoughts, target, args.thought))
    stacked = stack_groups(scoring, pad_id=0)
    B, _, L = stacked["input_ids_BGL"].shape
    N = B * G
    batch = flat_scoring_batch(stacked, s_ema_B=torch.zeros(B)) | {"position_ids_NL": torch.arange(L).expand(N, L)}
    grouped = shared_prefix_batch(
        batch["input_ids_NL"],
        G,
        torch.tensor([sg.prefix_len for sg in scoring]),
        stacked["attention_mask_BGL"].sum(-1).reshape(-1),
    )
    return batch, {**batch, **grouped}


def _step(model, cfg, batch):
    from nemo_smartpt.rlp.megatron.step import rlp_forward, rlp_loss_func

    model.zero_grad(set_to_none=True)
    loss, count, _ = rlp_loss_func(cfg, batch, rlp_forward(batch, model, cfg))
    (loss / count).backward()
    return float(loss), [p.grad.clone() for p in model.parameters()]


def _best(fn, repeats):
    """Best-of-``repeats`` (wall seconds, CPU seconds of this process). On a shared machine the CPU time is the
    stabler measure of the work done: wall time also counts the time other processes hold the cores."""
    fn()  # warm-up (allocations, lazy inits)
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=64, help="prefix tokens P (prompt + context + <think>)")
    parser.add_argument("--thought", type=int, default=64, help="thought tokens R (</think> included)")
    parser.add_argument("--rollouts", type=int, default=16, help="G")
    parser.add_argument("--groups", type=int, default=2, help="B, target positions in the micro-batch")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: CPU time = work)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from nemo_smartpt.rlp.config import RLPConfig
    from nemo_smartpt.rlp.flops import rlp_step_flops
    from nemo_smartpt.rlp.megatron.callbacks import model_flops_spec
    from nemo_smartpt.rlp.megatron.shared_attention import flops_ratio

    model = _setup(args)
    cfg = RLPConfig(num_rollouts=args.rollouts, max_thought_tokens=args.thought).validate()
    per_row, grouped = _batch(args)
    row_loss, row_grads = _step(model, cfg, per_row)
    grp_loss, grp_grads = _step(model, cfg, grouped)
    grad_diff = max(float((a - b).abs().max()) for a, b in zip(row_grads, grp_grads))
    grad_scale = max(float(a.abs().max()) for a in row_grads)
    # Interleaved, so that a change in machine load hits both arms alike.
    t_row, t_grp = (float("inf"),) * 2, (float("inf"),) * 2
    for _ in range(args.repeats):
        t_row = min(t_row, _best(lambda: _step(model, cfg, per_row), 1))
        t_grp = min(t_grp, _best(lambda: _step(model, cfg, grouped), 1))

    spec = model_flops_spec(model)
    B, G, P, R = args.groups, args.rollouts, args.context, args.thought
    common = dict(num_positions=B, num_rollouts=G, rollout_prefix_tokens=P, thought_tokens=R, baseline_tokens=0)
    f_row = rlp_step_flops(spec, **common, shared_prefix_training=False).training
    f_grp = rlp_step_flops(spec, **common, shared_prefix_training=True).training
    # The output layer runs at the scored positions only (thought tokens + target), the same in both layouts.
    scored = 3 * 2 * args.hidden * args.vocab * B * G * (R + 1)
    f_row, f_grp = f_row + scored, f_grp + scored
    d_row, d_grp = flops_ratio(P, R, G, args.hidden, args.layers, args.vocab)
    result = {
        "shape": {"context": P, "thought": R, "G": G, "groups": B, "layers": args.layers, "hidden": args.hidden},
        "threads": torch.get_num_threads(),
        "per_row_wall_s": t_row[0],
        "grouped_wall_s": t_grp[0],
        "wall_speedup": t_row[0] / t_grp[0],
        "per_row_cpu_s": t_row[1],
        "grouped_cpu_s": t_grp[1],
        "cpu_speedup": t_row[1] / t_grp[1],
        "tokens_per_row": int(per_row["input_ids_NL"].numel()),
        "tokens_grouped": int(grouped["sp_input_ids_RS"].numel()),
        "token_ratio": per_row["input_ids_NL"].numel() / grouped["sp_input_ids_RS"].numel(),
        "flops_ratio_accounting": f_row / f_grp,
        "flops_ratio_executed_dense_blocks": d_row / d_grp,
        "loss_abs_diff": abs(row_loss - grp_loss),
        "grad_max_abs_diff": grad_diff,
        "grad_max_abs": grad_scale,
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
