"""Add the three levers to your own Megatron-Bridge recipe script (the Python API behind ``smartpt train``).

    python examples/recipes/add_smartpt.py                       # CPU: the recipe shrunk, bundled data, a few steps
    python examples/recipes/add_smartpt.py --train-iters 200 --rlp-steps 20 --out-dir runs/my_recipe
    torchrun --nproc-per-node=8 examples/recipes/add_smartpt.py --catalog my_catalog.yaml --tokenizer /models/tok

A Bridge user's script is ``cfg = some_recipe(); pretrain(cfg, forward_step)``; with nemo_smartpt it becomes
``sp = add_smartpt(cfg, ...); pretrain(sp.config, sp.forward_step, callbacks=sp.callbacks)``. Running the script again
resumes the run from its newest complete checkpoint (SIGTERM saves one), exactly like ``smartpt train``.
"""

from __future__ import annotations

import argparse
import os

import torch


def my_recipe():
    """Your recipe: any function that returns a Bridge ``ConfigContainer`` (here Bridge's own vanilla GPT, which
    builds offline; ``llama3_8b_pretrain_config`` and friends work the same way)."""
    from megatron.bridge.recipes.gpt.h100.vanilla_gpt import vanilla_gpt_pretrain_1gpu_h100_bf16_config

    return vanilla_gpt_pretrain_1gpu_h100_bf16_config()


def cpu_sized(cfg, out_dir: str, seed: int):
    """On a machine without CUDA: the recipe at CPU size. nemo_smartpt's ``shrink=tiny`` keeps the recipe's
    architecture where this version has it; otherwise the tiny CPU GPT of ``recipe=cpu_tiny`` stands in."""
    try:
        from nemo_smartpt.bridge.cpu_config import adapt_to_cpu
        from nemo_smartpt.bridge.shrink import shrink_recipe
    except ImportError:
        from nemo_smartpt.bridge.recipe import cpu_pretrain_config

        return cpu_pretrain_config(None, out_dir, seed=seed)
    shrink_recipe(cfg, "my_recipe")
    adapt_to_cpu(cfg, "my_recipe")
    return cfg


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default="runs/my_recipe")
    parser.add_argument("--catalog", default="bundled", help="source catalog YAML (default: the bundled corpus)")
    parser.add_argument("--bundled-dir", default="runs/bundled")
    parser.add_argument("--tokenizer", default="byte", help="the tokenizer the data was prepared with")
    parser.add_argument("--train-iters", type=int, default=8)
    parser.add_argument("--rlp-steps", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()

    from nemo_smartpt.runtime import apply_cpu_runtime

    apply_cpu_runtime()  # CPU shims for megatron-core/Bridge; does nothing on a GPU node
    from megatron.bridge.training.pretrain import pretrain

    from nemo_smartpt.bridge import DataConfig, RLPConfig, ScheduleConfig, add_smartpt
    from nemo_smartpt.bridge.launch import ensure_single_process_env

    cfg = my_recipe()
    if not torch.cuda.is_available():
        cfg = cpu_sized(cfg, args.out_dir, args.seed)
    cfg.train.train_iters = args.train_iters
    cfg.train.global_batch_size, cfg.train.micro_batch_size = 8, 4
    # Recipes write under ./nemo_experiments by default; keep this run's checkpoints and logs in its directory.
    cfg.checkpoint.save = cfg.checkpoint.load = os.path.join(args.out_dir, "checkpoints")
    cfg.logger.tensorboard_dir = os.path.join(args.out_dir, "tb")

    sp = add_smartpt(
        cfg,
        data=DataConfig(catalog=args.catalog, bundled_dir=args.bundled_dir, tokenizer=args.tokenizer),
        schedule=ScheduleConfig(rlp_steps=args.rlp_steps),
        rlp=RLPConfig(num_rollouts=4, max_thought_tokens=16, min_context=8, thought_prompt=""),
        out_dir=args.out_dir,
        seed=args.seed,
    )
    if sp.complete:
        print(f"run complete at step {sp.complete_at} ({sp.out})")
        return 0
    ensure_single_process_env()  # a world of one without torchrun
    pretrain(sp.config, sp.forward_step, callbacks=sp.callbacks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
