"""``smartpt train``: compose a Bridge recipe, a preset and overrides, plan the data, and run ``pretrain()``.

Order of work (each step fails early with a one-line error naming the bad key or file):
1. split the command line into our settings and Bridge's (:mod:`nemo_smartpt.bridge.train_config`);
2. build the Bridge ``ConfigContainer`` from the recipe and apply Bridge overrides with Bridge's own parser;
3. resolve the schedule (next-token steps, then RLP or its token-/FLOP-matched next-token replacement);
4. plan the catalog for exactly the tokens the run consumes and point the phased dataset provider at the plan;
5. run ``pretrain()`` with our forward step (next-token with per-source/per-phase loss, switching to RLP for the
   last ``schedule.rlp_steps``) and callbacks (metrics, RLP/EMA, evaluation).

Resuming: the same command again finds ``out_dir/checkpoints`` (Bridge's ``checkpoint.load``) and continues the same
sample stream (``consumed_train_samples``), the RLP counters and the EMA weights.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from nemo_smartpt.bridge.train_config import TrainConfig, check_train_config, split_command_line
from nemo_smartpt.overrides import build_config, describe

PLAN_MARGIN = 1.02  # plan 2% more tokens than the steps consume: sample rounding must never run the stream dry


def main(args: list[str]) -> int:
    if "--help" in args or "-h" in args:
        print(_help())
        return 0
    ours, bridge_overrides, print_config = split_command_line(args)
    cfg = build_config(TrainConfig, ours)
    check_train_config(cfg)
    run = TrainRun(cfg, bridge_overrides)
    if print_config:
        print(run.describe())
        return 0
    run.prepare_data()
    return run.train()


class TrainRun:
    """One ``smartpt train`` invocation: the resolved configs and the objects ``pretrain()`` needs."""

    def __init__(self, cfg: TrainConfig, bridge_overrides: list[str]):
        from nemo_smartpt.runtime import apply_cpu_runtime

        apply_cpu_runtime()
        from megatron.bridge.training.utils.omegaconf_utils import process_config_with_overrides

        from nemo_smartpt.bridge.recipe import TinyModelConfig, cpu_pretrain_config, recipe_config
        from nemo_smartpt.reasoning.tokenizer import load_tokenizer

        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.tokenizer = load_tokenizer(cfg.data.tokenizer)
        # The byte tokenizer is Bridge's NullTokenizer with EOD = 256 (its last id); a Hugging Face tokenizer directory
        # is loaded by Bridge itself (HuggingFaceTokenizer), so the model and the data agree on the vocabulary.
        vocab = self.tokenizer.eod + 1 if cfg.data.tokenizer == "byte" else self.tokenizer.vocab_size
        if cfg.recipe == "cpu_tiny":
            self.bridge = cpu_pretrain_config(
                None, str(self.out), model=TinyModelConfig(vocab_size=vocab), seed=cfg.seed, save_interval=None
            )
        else:
            self.bridge = recipe_config(
                cfg.recipe,
                str(self.out),
                vocab_size=vocab,
                seed=cfg.seed,
                shrink=cfg.shrink,
                model_config=cfg.model_config,
            )
        if cfg.data.tokenizer != "byte":
            from megatron.bridge.training.config import TokenizerConfig

            self.bridge.tokenizer = TokenizerConfig(
                tokenizer_type="HuggingFaceTokenizer", tokenizer_model=str(Path(self.tokenizer.path).parent)
            )
        # Checkpoint into the run directory by default, so the same command resumes (users may override both).
        self.bridge.checkpoint.save = self.bridge.checkpoint.load = str(self.out / "checkpoints")
        self.bridge.checkpoint.save_interval = self.bridge.train.train_iters
        try:
            process_config_with_overrides(self.bridge, cli_overrides=bridge_overrides)
        except Exception as exc:  # Bridge raises plain ValueErrors/OmegaConf errors naming the key
            from nemo_smartpt.overrides import OverrideError

            raise OverrideError(f"Bridge config: {str(exc).splitlines()[0]}") from None
        prompt_tokens = len(self.tokenizer.encode_batch([cfg.rlp.thought_prompt])[0])
        self.schedule = resolve_schedule(cfg, self.bridge, prompt_tokens)
        self.bridge.train.train_iters = self.schedule["total_steps"]
        if self.schedule["rlp_steps"]:
            # eq. 8 normalises by the thoughts of the whole global batch: Megatron must sum (loss, count) over
            # micro-batches and divide once. Next-token steps are unchanged by it (every micro-batch has equal tokens).
            self.bridge.model.calculate_per_token_loss = True
        self.plan_path: Path | None = None

    @property
    def seq_length(self) -> int:
        return int(self.bridge.model.seq_length)

    @property
    def global_batch_size(self) -> int:
        return int(self.bridge.train.global_batch_size)

    def describe(self) -> str:
        from omegaconf import OmegaConf

        ours = OmegaConf.to_yaml(OmegaConf.structured(self.cfg))
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "bridge.yaml")
            self.bridge.to_yaml(path)  # Bridge's own serialisation of its ConfigContainer
            bridge = Path(path).read_text()
        return f"# smartpt\n{ours}\n# schedule\n{json.dumps(self.schedule, indent=2)}\n\n# megatron-bridge\n{bridge}"

    def prepare_data(self) -> None:
        import torch

        from nemo_smartpt.blend.provider import PhasedPlanDatasetProvider
        from nemo_smartpt.bridge.data import plan_for_run

        self.plan_path = plan_for_run(self.cfg, self.out, self.schedule["samples"] * self.seq_length * PLAN_MARGIN)
        self.bridge.dataset = PhasedPlanDatasetProvider(
            plan_path=str(self.plan_path),
            seq_length=self.seq_length,
            global_batch_size=self.global_batch_size,
            baseline=None if self.cfg.data.arm == "planned" else self.cfg.data.arm,
            seed=self.cfg.seed,
            split=self.cfg.data.split,
            path_to_cache=str(self.out / "index_cache"),
            # On a GPU node, worker processes overlap loading with compute; on a 2-core CPU they only compete with it.
            num_workers=2 if torch.cuda.is_available() else 0,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=torch.cuda.is_available(),
        )

    def train(self) -> int:
        from megatron.bridge.training.pretrain import pretrain

        from nemo_smartpt.bridge.launch import ensure_single_process_env
        from nemo_smartpt.bridge.objective import build_objective

        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "smartpt_config.json").write_text(json.dumps(asdict(self.cfg), indent=2, default=str))
        forward_step, callbacks = build_objective(self)
        ensure_single_process_env()
        pretrain(self.bridge, forward_step, callbacks=callbacks)
        return 0


def resolve_schedule(cfg: TrainConfig, bridge, prompt_tokens: int = 0) -> dict:
    """Steps of each objective. ``train.train_iters`` counts next-token + RLP steps; a matched baseline replaces the
    RLP steps by next-token steps over the same documents (token-matched) or the same FLOPs (FLOP-matched)."""
    total = int(bridge.train.train_iters)
    rlp_steps = cfg.schedule.rlp_steps
    if rlp_steps > total:
        from nemo_smartpt.overrides import OverrideError

        raise OverrideError(f"schedule.rlp_steps={rlp_steps} exceeds train.train_iters={total}")
    ntp_steps = total - rlp_steps
    gbs, seq = int(bridge.train.global_batch_size), int(bridge.model.seq_length)
    schedule = {"ntp_steps": ntp_steps, "rlp_steps": rlp_steps, "matched_ntp_steps": 0}
    if rlp_steps and cfg.schedule.rlp_baseline != "none":
        if cfg.schedule.rlp_baseline == "token_matched":
            matched = rlp_steps
        else:
            from nemo_smartpt.bridge.compute import flop_matched_steps

            matched = flop_matched_steps(cfg.rlp, bridge, rlp_steps, prompt_tokens)
        schedule.update(rlp_steps=0, matched_ntp_steps=matched)
    schedule["total_steps"] = schedule["ntp_steps"] + schedule["rlp_steps"] + schedule["matched_ntp_steps"]
    schedule["samples"] = schedule["total_steps"] * gbs
    schedule["tokens"] = schedule["samples"] * seq
    return schedule


def _help() -> str:
    from nemo_smartpt.bridge.train_config import CONF_DIR

    presets = ", ".join(sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
    return "\n".join(
        [
            "usage: smartpt train [+experiment=NAME] [key=value ...] [--cfg job]",
            "",
            f"presets (conf/experiment): {presets}",
            "Any key outside ours goes to Megatron-Bridge's ConfigContainer (model.*, train.*, optimizer.*, "
            "checkpoint.*, logger.*, ...).",
            "--cfg job prints the resolved configs and exits.",
            "",
            describe(TrainConfig),
        ]
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
