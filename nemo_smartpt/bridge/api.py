"""The Python API: add the three levers to your own Megatron-Bridge ``ConfigContainer``.

::

    from megatron.bridge.training.pretrain import pretrain
    from nemo_smartpt.bridge import add_smartpt, DataConfig, ScheduleConfig

    sp = add_smartpt(llama3_8b_pretrain_config(), data=DataConfig(catalog="catalog.yaml"),
                     schedule=ScheduleConfig(rlp_steps=200), out_dir="runs/llama_rlp")
    if not sp.complete:
        pretrain(sp.config, sp.forward_step, callbacks=sp.callbacks)

``smartpt train`` is this call on the recipe it composed from ``recipe=``/``--config-file`` and the overrides; there is
no second code path. :func:`add_smartpt` changes the container in place and returns it as ``sp.config``:

- ``dataset``: the phased plan dataset (our catalog planned for exactly the tokens this run consumes);
- ``train.train_iters``: the schedule's total (a FLOP-matched baseline trains more next-token steps than RLP steps);
- ``tokenizer``: the one the data was prepared with (``data.tokenizer``);
- ``checkpoint``: ``save``/``load`` default to ``out_dir/checkpoints``; ``save_interval`` is chosen from the final
  config (:func:`~nemo_smartpt.bridge.preflight.choose_save_interval`) unless given; on CPU only the two newest
  checkpoints are kept (``most_recent_k``) unless the config keeps another number; ``train.exit_signal_handler`` is on,
  so SIGTERM (Slurm preemption, ``timeout``, ``docker stop``) saves a checkpoint and exits.

Before planning it runs the pre-flight checks (:mod:`nemo_smartpt.bridge.preflight`) and the resume guard
(:mod:`nemo_smartpt.bridge.run_dir`): a mismatched run directory is refused before anything in it is written.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from pathlib import Path

from nemo_smartpt.bridge import run_dir
from nemo_smartpt.bridge.train_config import (
    DataConfig,
    EvalConfig,
    ResumeConfig,
    ScheduleConfig,
    TrainConfig,
    check_train_config,
)
from nemo_smartpt.overrides import OverrideError
from nemo_smartpt.rlp.config import RLPConfig

PLAN_MARGIN = 1.02  # plan 2% more tokens than the steps consume: sample rounding must never run the stream dry
# Bridge sections whose settings decide what a resumed run computes; the rest (logging, checkpoint paths, profiling,
# validation cadence, the dataset we replace) may change between a run and its resume.
COMPARED_SECTIONS = ("model", "train", "optimizer", "scheduler", "tokenizer", "rng", "mixed_precision", "ddp")
NOT_COMPARED = ("train.exit_", "train.manual_gc", "ddp.check_for_nan_in_grad")


def log(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[smartpt] {message}", flush=True)


class SmartPT:
    """What :func:`add_smartpt` returns: pass ``config``, ``forward_step`` and ``callbacks`` to ``pretrain()``."""

    def __init__(self, config, settings: TrainConfig, out_dir: Path, tokenizer):
        self.config = config
        """The Bridge ``ConfigContainer`` with our dataset provider and the run's schedule."""
        self.cfg = settings
        """Our settings (resolved: ``out_dir``, a fitted ``rlp.max_context``)."""
        self.out = out_dir
        self.tokenizer = tokenizer
        self.forward_step = None
        """Bridge's forward step: next-token (per-source/per-phase loss) then RLP for the last ``rlp_steps``."""
        self.callbacks: list = []
        """Bridge callbacks (metrics, RLP/EMA, evaluation) for ``pretrain(..., callbacks=...)``."""
        self.schedule: dict = {}
        self.plan_path: Path | None = None
        self.complete_at: int | None = None
        """Set when the run directory holds a checkpoint at the last step: there is nothing left to train."""
        self.resumed_from: int | None = None

    @property
    def complete(self) -> bool:
        return self.complete_at is not None

    @property
    def seq_length(self) -> int:
        return int(self.config.model.seq_length)

    @property
    def global_batch_size(self) -> int:
        return int(self.config.train.global_batch_size)


def add_smartpt(
    config,
    settings: TrainConfig | None = None,
    *,
    data: DataConfig | None = None,
    schedule: ScheduleConfig | None = None,
    rlp: RLPConfig | None = None,
    eval: EvalConfig | None = None,
    resume: ResumeConfig | None = None,
    out_dir: str | None = None,
    seed: int | None = None,
    save_interval: int | None = None,
    fit_rlp_context: bool = True,
) -> SmartPT:
    """Add the curriculum, reasoning data and RLP to a Bridge ``ConfigContainer``.

    Args:
        config: a Bridge ``ConfigContainer`` (a recipe's, or ``ConfigContainer.from_yaml``); changed in place.
        settings: all our settings at once (:class:`TrainConfig`); the keyword groups below replace its parts.
        data / schedule / rlp / eval / resume: our settings groups (the same dataclasses as ``smartpt train``'s).
        out_dir: run directory for the plan, metrics and (by default) checkpoints; default ``settings.out_dir``, else
            ``runs/<experiment>`` (``runs/train`` without one).
        seed: seed of the data order and rollouts (weights use ``config.rng.seed``); default ``settings.seed``.
        save_interval: checkpoint every N steps; None chooses from the config (see the module docstring).
        fit_rlp_context: lower ``rlp.max_context`` when an RLP row would not fit ``model.seq_length``; False fails.
    """
    from nemo_smartpt.runtime import apply_cpu_runtime

    apply_cpu_runtime()
    cfg = copy.deepcopy(settings) if settings is not None else TrainConfig()
    for name, value in (("data", data), ("schedule", schedule), ("rlp", rlp), ("eval", eval), ("resume", resume)):
        if value is not None:
            setattr(cfg, name, copy.deepcopy(value))
    if out_dir is not None:
        cfg.out_dir = out_dir
    if seed is not None:
        cfg.seed = seed
    check_train_config(cfg)
    cfg.out_dir = resolve_out_dir(cfg)
    return _build(config, cfg, save_interval, fit_rlp_context)


def resolve_out_dir(cfg: TrainConfig) -> str:
    """``out_dir``, or ``runs/<experiment>`` (``runs/train``): presets never share a run directory."""
    return cfg.out_dir or os.path.join("runs", cfg.experiment or "train")


def _build(config, cfg: TrainConfig, save_interval: int | None, fit_rlp_context: bool) -> SmartPT:
    from nemo_smartpt.bridge import preflight
    from nemo_smartpt.reasoning.tokenizer import TokenizerError, load_tokenizer

    out = Path(cfg.out_dir)
    preflight.check_paths(cfg, config)
    preflight.check_world_size(config)
    try:
        tokenizer = load_tokenizer(cfg.data.tokenizer)
    except TokenizerError as exc:
        raise OverrideError(f"data.tokenizer: {exc}") from None
    sp = SmartPT(config, cfg, out, tokenizer)
    _use_data_tokenizer(config, cfg, tokenizer)

    # The schedule, and the RLP row check with it (RLP rows must fit the model before anything trains).
    layout = None
    if cfg.schedule.rlp_steps:
        from nemo_smartpt.rlp.prompt import layout_from_tokenizer

        layout = layout_from_tokenizer(cfg.rlp, lambda text: tokenizer.encode_batch([text])[0], pad_id=tokenizer.eod)
        note = preflight.fit_rlp_context(cfg.rlp, layout, config, may_change=fit_rlp_context)
        if note:
            log(note)
    prompt_tokens = len(tokenizer.encode_batch([cfg.rlp.thought_prompt])[0]) if cfg.rlp.thought_prompt else 0
    sp.schedule = resolve_schedule(cfg, config, prompt_tokens)
    config.train.train_iters = sp.schedule["total_steps"]
    if sp.schedule["rlp_steps"]:
        # eq. 8 normalises by the thoughts of the whole global batch: Megatron must sum (loss, count) over
        # micro-batches and divide once. Next-token steps are unchanged by it (every micro-batch has equal tokens).
        config.model.calculate_per_token_loss = True

    _checkpoint_policy(config, out, sp.schedule["total_steps"], save_interval)

    # The resume guard: nothing in out_dir is written before this passes.
    catalog_text = None if cfg.data.plan else _catalog_text(cfg)
    snapshot = run_snapshot(cfg, config, catalog_text)
    try:
        check = run_dir.check_resume(out, snapshot, list(cfg.resume.allow_changes))
    except run_dir.RunDirError as exc:
        raise OverrideError(str(exc)) from None
    if check.changed:
        log(f"resuming {out} with changed settings (resume.allow_changes): {', '.join(check.changed)}")
    _resume_point(sp)

    sp.plan_path = _plan(sp, catalog_text)
    if int(os.environ.get("RANK", "0")) == 0:
        run_dir.write_snapshot(out, snapshot)
        run_dir.atomic_write_text(
            out / "smartpt_config.json", json.dumps(dataclasses.asdict(cfg), indent=2, default=str)
        )
    _set_dataset(sp)
    from nemo_smartpt.bridge.objective import build_objective

    sp.forward_step, sp.callbacks = build_objective(sp)
    return sp


def resolve_schedule(cfg: TrainConfig, bridge, prompt_tokens: int = 0) -> dict:
    """Steps of each objective. ``train.train_iters`` counts next-token + RLP steps; a matched baseline replaces the
    RLP steps by next-token steps over the same documents (token-matched) or the same FLOPs (FLOP-matched)."""
    total = int(bridge.train.train_iters)
    rlp_steps = cfg.schedule.rlp_steps
    if rlp_steps > total:
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


def _use_data_tokenizer(config, cfg: TrainConfig, tokenizer) -> None:
    """The model reads the token ids the data was prepared with: Bridge's NullTokenizer for bytes (EOD = 256, its
    last id), else Bridge's HuggingFaceTokenizer on the same directory."""
    from megatron.bridge.training.config import TokenizerConfig

    if cfg.data.tokenizer == "byte":
        vocab = tokenizer.eod + 1
        current = getattr(config, "tokenizer", None)
        if getattr(current, "tokenizer_type", None) != "NullTokenizer" or current.vocab_size != vocab:
            config.tokenizer = TokenizerConfig(tokenizer_type="NullTokenizer", vocab_size=vocab)
    else:
        vocab = tokenizer.vocab_size
        config.tokenizer = TokenizerConfig(
            tokenizer_type="HuggingFaceTokenizer", tokenizer_model=str(Path(tokenizer.path).parent)
        )
    model_vocab = getattr(config.model, "vocab_size", None)
    if model_vocab is not None and int(model_vocab) < vocab:
        # Bridge refuses a model smaller than its tokenizer; the data holds ids up to vocab - 1.
        log(f"model.vocab_size {model_vocab} -> {vocab}: data.tokenizer={cfg.data.tokenizer} has {vocab} ids")
        config.model.vocab_size = vocab


def _checkpoint_policy(config, out: Path, total_steps: int, save_interval: int | None) -> None:
    import torch

    from nemo_smartpt.bridge.preflight import choose_save_interval

    ckpt = config.checkpoint
    if not ckpt.save:
        ckpt.save = str(out / "checkpoints")
    if not ckpt.load:
        ckpt.load = ckpt.save
    ckpt.save_interval = save_interval if save_interval else choose_save_interval(ckpt.save_interval, total_steps)
    if not torch.cuda.is_available() and (ckpt.most_recent_k is None or ckpt.most_recent_k < 0):
        # Keep two: the newest, and the one before it to fall back to if the newest was cut short.
        ckpt.most_recent_k = 2
    # SIGTERM -> Bridge saves a checkpoint at the end of the current step and exits (the same command resumes).
    config.train.exit_signal_handler = True


def run_snapshot(cfg: TrainConfig, config, catalog_text: str | None) -> dict[str, str]:
    """The settings a resumed run must share with the run it continues, flattened to ``{key: json}``."""
    ours = dataclasses.asdict(cfg)
    for key in ("out_dir", "resume"):
        ours.pop(key, None)
    ours["eval"].pop("enabled", None)
    # The resolved schedule is not compared: it follows from schedule.*, rlp.* and train.* (compared), so allowing
    # train.train_iters alone is enough to extend a run.
    tree: dict = dict(ours)
    if catalog_text is not None:
        tree["data"]["catalog_content"] = hashlib.sha256(catalog_text.encode()).hexdigest()[:16]
    if cfg.data.plan:
        tree["data"]["plan_content"] = hashlib.sha256(Path(cfg.data.plan).read_bytes()).hexdigest()[:16]
    whole = config.to_dict()
    for section in COMPARED_SECTIONS:
        tree[section] = _plain(whole.get(section))
    flat = run_dir.flatten(tree)
    return {k: v for k, v in flat.items() if not k.startswith(NOT_COMPARED)}


def _plain(value):
    """JSON-stable values: callables by dotted name (not ``<function at 0x...>``), dtypes and enums by name."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if k != "_target_"}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    if hasattr(value, "name") and hasattr(value, "value"):  # enums
        return str(value.name)
    return str(value)


def _catalog_text(cfg: TrainConfig) -> str:
    from nemo_smartpt.bridge.data import catalog_text

    return catalog_text(cfg)


def _resume_point(sp: SmartPT) -> None:
    """Resume from the newest complete checkpoint, and stop early when it is the last step."""
    ckpt = sp.config.checkpoint
    if getattr(ckpt, "ckpt_step", None) is not None:
        return  # the user chose the checkpoint
    scan = run_dir.scan_checkpoints(ckpt.load)
    if scan.latest is None and not scan.problems:
        return
    latest_problem = scan.problems.get(scan.latest) if scan.latest is not None else None
    if scan.complete is None:
        step, problem = next(iter(sorted(scan.problems.items())), (scan.latest, "no checkpoint data"))
        raise OverrideError(
            f"{ckpt.load} holds no complete checkpoint (iter_{step:07d}: {problem}); move it away to start over, or "
            "point checkpoint.load at a complete one"
        )
    moved = run_dir.set_aside_incomplete(Path(ckpt.load), scan) if int(os.environ.get("RANK", "0")) == 0 else []
    for name in moved:
        log(f"set aside an interrupted checkpoint save: {Path(ckpt.load) / name}")
    if latest_problem is not None or (scan.latest is not None and scan.latest != scan.complete):
        log(
            f"checkpoint iter_{scan.latest:07d} is incomplete ({latest_problem or 'not found'}); resuming from the "
            f"last complete one, iter_{scan.complete:07d}"
        )
        ckpt.ckpt_step = scan.complete
    sp.resumed_from = scan.complete
    if scan.complete >= sp.schedule["total_steps"]:
        sp.complete_at = scan.complete


def _plan(sp: SmartPT, catalog_text: str | None) -> Path:
    """The run's plan: ``out/plan/plan.json`` once it exists (a resume never re-plans), else a new plan published
    whole (written beside its final name, then renamed)."""
    import tempfile

    cfg, out = sp.cfg, sp.out
    if cfg.data.plan:
        return Path(cfg.data.plan)
    existing = out / "plan" / "plan.json"
    if existing.exists():
        _check_plan_covers(existing, sp)
        return existing
    from nemo_smartpt.blend.plan_cli import PlanConfig, run

    out.mkdir(parents=True, exist_ok=True)
    catalog = out / "catalog.yaml"
    run_dir.atomic_write_text(catalog, catalog_text)
    staging = Path(tempfile.mkdtemp(prefix=".plan.", dir=out))
    plan_cfg = PlanConfig(
        catalog=str(catalog),
        budget_tokens=float(int(sp.schedule["samples"] * sp.seq_length * PLAN_MARGIN)),
        out=str(staging),
        phase_boundaries=list(cfg.data.phase_boundaries),
        seed=cfg.seed,
        # the caps count the split the run reads and keep room for its sample and batch rounding
        split=cfg.data.split,
        seq_length=sp.seq_length,
        global_batch_size=int(sp.config.train.global_batch_size),
    )
    run(plan_cfg)
    run_dir.publish_dir(staging, out / "plan")
    return existing


def _check_plan_covers(plan_json: Path, sp: SmartPT) -> None:
    """An allowed change of ``train.train_iters`` must not outrun the run's plan (it is never re-planned)."""
    budget = float(json.loads(plan_json.read_text()).get("budget_tokens", 0))
    need = sp.schedule["samples"] * sp.seq_length
    if budget and need > budget:
        raise OverrideError(
            f"{plan_json} covers {int(budget)} tokens but {sp.schedule['total_steps']} steps need {need}; a resume "
            "never re-plans: lower train.train_iters or start a new out_dir"
        )


def _set_dataset(sp: SmartPT) -> None:
    import torch

    from nemo_smartpt.blend.provider import PhasedPlanDatasetProvider

    cfg = sp.cfg
    sp.config.dataset = PhasedPlanDatasetProvider(
        plan_path=str(sp.plan_path),
        seq_length=sp.seq_length,
        global_batch_size=sp.global_batch_size,
        baseline=None if cfg.data.arm == "planned" else cfg.data.arm,
        seed=cfg.seed,
        split=cfg.data.split,
        path_to_cache=str(sp.out / "index_cache"),
        # On a GPU node, worker processes overlap loading with compute; on a 2-core CPU they only compete with it.
        num_workers=2 if torch.cuda.is_available() else 0,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=torch.cuda.is_available(),
    )
