"""Settings of ``smartpt train`` and how a command line becomes them.

Two config trees meet on one command line:

- ours (:class:`TrainConfig`): ``experiment``, ``recipe``, ``out_dir``, ``seed``, ``data.*``, ``rlp.*``,
  ``schedule.*``, ``eval.*``, ``resume.*`` — dataclasses, the only home of their defaults (the Python API,
  :func:`nemo_smartpt.bridge.add_smartpt`, takes the same ones);
- Megatron-Bridge's ``ConfigContainer``: every other top-level key (``model.*``, ``train.*``, ``optimizer.*``,
  ``checkpoint.*``, ``dataset.*``, ``logger.*``, ...), applied with Bridge's own ``process_config_with_overrides``.

``+experiment=NAME`` selects ``conf/experiment/NAME.yaml``; a preset only composes (it lists overrides for both trees
as nested YAML) and the command line wins over it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from nemo_smartpt.overrides import OverrideError, hydra_quote, parse_overrides
from nemo_smartpt.rlp.config import RLPConfig, RLPConfigError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
ARMS = ("planned", "natural", "random_order")
RLP_BASELINES = ("none", "token_matched", "flop_matched")
SHRINK_LEVELS = ("none", "tiny")


@dataclass
class DataConfig:
    """Where the training data comes from and which ablation arm of the blend is trained."""

    catalog: str = "bundled"
    """Source catalog YAML, or ``bundled`` for the project's synthetic corpus (built once under ``bundled_dir``)."""
    bundled_dir: str = "runs/bundled"
    """Where the bundled corpus, its indexed datasets and catalog are written and reused."""
    plan: str = ""
    """An existing ``plan.json`` to train on; empty plans the catalog for this run's budget."""
    arm: str = "planned"
    """``planned`` (the phases), ``natural`` (weight proportional to tokens) or ``random_order`` (BASE-RO)."""
    reasoning: bool = True
    """Keep the catalog's ``reasoning`` sources; False gives the no-reasoning base."""
    reasoning_sources: list[str] | None = None
    """Keep only these reasoning sources of the catalog (the paper's arms: ``[reasoning_shq]``, ``[reasoning_ldq]``,
    ``[reasoning_lmq]``); None keeps all."""
    reasoning_share: float | None = None
    """Override the reasoning sources' ``target_share`` (0.2 = the paper's 80/20; 0.1 and 0.4 its ablation)."""
    reasoning_phases: list[str] | None = None
    """Override the phases reasoning goes into (``[phase2]``, ``[phase1]``, ``[phase1,phase2]``)."""
    phase_boundaries: list[float] = field(default_factory=lambda: [0.6])
    """Fractions of the next-token budget where phases start (``[0.6]``: 60% / 40%)."""
    tokenizer: str = "byte"
    """The tokenizer the data was prepared with (``byte`` or a local HF tokenizer path); RLP encodes with it."""
    split: str = "98,1,1"
    """Train/valid/test document split of every source."""


@dataclass
class ScheduleConfig:
    """How the run's steps are spent: next-token steps, then (optionally) RLP steps."""

    rlp_steps: int = 0
    """The last ``rlp_steps`` of ``train.train_iters`` use the RLP objective (continued pretraining with RLP)."""
    rlp_baseline: str = "none"
    """Replace the RLP steps by next-token steps: ``token_matched`` (same documents) or ``flop_matched`` (same
    FLOPs, computed from the RLP config; more steps)."""


@dataclass
class EvalConfig:
    """Held-out evaluation at the end of training, through lm-evaluation-harness (the ``smartpt`` adapter)."""

    tasks: list[str] = field(default_factory=list)
    """lm-eval task names; empty = every task in the catalog's ``tasks/`` folder except ``*_dev`` (the world's
    ``world_knowledge`` and ``world_reasoning``)."""
    include_path: str = ""
    """Folder of lm-eval task YAMLs; empty = ``tasks/`` beside the catalog (or under ``data.bundled_dir``)."""
    batch_size: int = 32
    """Requests per forward pass of the evaluation."""
    enabled: bool = True
    """Evaluate at the end of training (needs pipeline parallel size 1; else ``smartpt eval`` the checkpoint)."""


@dataclass
class ResumeConfig:
    """What a command may change when it continues an existing run directory."""

    allow_changes: list[str] = field(default_factory=list)
    """Settings that may differ from the run's ``run_snapshot.json`` (``[train.train_iters]``, ``[rlp]`` for every
    ``rlp.*``, ``[optimizer.lr,logger]``; ``*`` wildcards work). Anything else that differs fails in one line."""


@dataclass
class TrainConfig:
    """``smartpt train``: ours; Bridge's ConfigContainer fields are overridden with their own keys."""

    experiment: str = ""
    """Preset name (``+experiment=NAME`` loads ``conf/experiment/NAME.yaml``)."""
    recipe: str = "cpu_tiny"
    """Bridge recipe: ``cpu_tiny`` (tiny GPT; fp32 on CPU, bf16 on GPU), any recipe function exported by
    ``megatron.bridge.recipes`` (``llama32_1b_pretrain_1gpu_h100_bf16_config``, ...), ``module:function``, or the
    short names ``vanilla_gpt`` and ``nemotron_nano_12b_v2`` (hybrid Mamba; GPU only)."""
    shrink: str = "none"
    """``tiny``: the recipe's architecture at CPU size (2 layers, width 128, same FFN/GQA/head ratios, RoPE, norms
    and tying kept; seq 128, the tokenizer's vocabulary); needed for any recipe but ``cpu_tiny`` on a CPU."""
    model_config: str = "auto"
    """Where a recipe's Hugging Face model config comes from: ``auto`` (the HF cache, else the copy under
    ``conf/hf/``), ``hub``, or a local directory holding the model's ``config.json`` (offline clusters)."""
    out_dir: str = ""
    """Run directory: plan, checkpoints, tensorboard, metrics.jsonl, eval.json; empty = ``runs/<experiment>``
    (``runs/train`` without a preset), so presets never share one."""
    seed: int = 1234
    """Seed of weights, data order, rollouts."""
    data: DataConfig = field(default_factory=DataConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    rlp: RLPConfig = field(default_factory=RLPConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    resume: ResumeConfig = field(default_factory=ResumeConfig)


OURS = {
    "experiment",
    "recipe",
    "shrink",
    "model_config",
    "out_dir",
    "seed",
    "data",
    "schedule",
    "rlp",
    "eval",
    "resume",
}


def flatten(tree: dict, prefix: str = "") -> list[str]:
    """Nested YAML -> Hydra override strings (lists and scalars rendered in Hydra's grammar)."""
    out = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.extend(flatten(value, name + "."))
        else:
            out.append(f"{name}={_hydra_value(value)}")
    return out


def _hydra_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and any(c in value for c in " ,[]{}=:'\"\\"):
        return hydra_quote(value)
    return str(value)


def load_preset(name: str) -> list[str]:
    path = CONF_DIR / "experiment" / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
        raise OverrideError(f"unknown experiment {name!r} (known: {', '.join(known)})")
    tree = yaml.safe_load(path.read_text()) or {}
    return [f"experiment={name}", *flatten(tree)]


def split_command_line(args: list[str]) -> tuple[list[str], list[str], bool]:
    """Expand presets and split overrides into (ours, Bridge's, print_config)."""
    print_config = False
    expanded: list[str] = []
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg in ("--cfg", "-c"):
            print_config = True
            if rest and rest[0] in ("job", "all"):
                rest.pop(0)
            continue
        if arg.startswith("--cfg="):
            print_config = True
            continue
        expanded.append(arg)
    ours: list[str] = []
    bridge: list[str] = []
    presets = []
    for ov in parse_overrides(expanded):
        if ov.key_or_group == "experiment" and not ov.is_delete():
            presets.extend(load_preset(str(ov.value())))
    for text, ov in zip(expanded, parse_overrides(expanded)):
        if ov.key_or_group == "experiment":
            continue
        (ours if ov.key_or_group.split(".")[0] in OURS else bridge).append(text)
    # Preset first, command line after it, so the command line wins.
    preset_ours = [p for p in presets if p.split("=")[0].split(".")[0].lstrip("+~") in OURS]
    preset_bridge = [p for p in presets if p not in preset_ours]
    return preset_ours + ours, preset_bridge + bridge, print_config


def check_train_config(cfg: TrainConfig) -> None:
    if cfg.data.arm not in ARMS:
        raise OverrideError(f"data.arm must be one of {', '.join(ARMS)}, got {cfg.data.arm!r}")
    if cfg.schedule.rlp_baseline not in RLP_BASELINES:
        raise OverrideError(
            f"schedule.rlp_baseline must be one of {', '.join(RLP_BASELINES)}, got {cfg.schedule.rlp_baseline!r}"
        )
    if cfg.shrink not in SHRINK_LEVELS:
        raise OverrideError(f"shrink must be one of {', '.join(SHRINK_LEVELS)}, got {cfg.shrink!r}")
    if cfg.schedule.rlp_steps < 0:
        raise OverrideError(f"schedule.rlp_steps must be >= 0, got {cfg.schedule.rlp_steps}")
    try:
        cfg.rlp.validate()
    except RLPConfigError as exc:  # a bad rlp.* override: one line naming the field, like every other key
        raise OverrideError(str(exc)) from exc
