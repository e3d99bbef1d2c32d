"""``smartpt train``: compose a Bridge config, hand it to :func:`~nemo_smartpt.bridge.api.add_smartpt`, run
``pretrain()``.

Order of work (each step fails early with a one-line error naming the bad key or file):
1. split the command line into our settings and Bridge's (:mod:`nemo_smartpt.bridge.train_config`);
2. build the Bridge ``ConfigContainer``: the recipe (``recipe=``), or a ConfigContainer YAML (``--config-file``,
   loaded with Bridge's ``ConfigContainer.from_yaml``); apply Bridge overrides with Bridge's own parser and check
   their types;
3. ``add_smartpt`` (the Python API, the one code path): pre-flight checks, schedule, resume guard, plan, dataset
   provider, forward step and callbacks;
4. run ``pretrain()``, or say ``run complete at step N`` when the run directory already holds the last step.

``--cfg job`` prints, on stdout and nothing else, the YAML of step 2 (Bridge's ConfigContainer with our settings under
``smartpt:``); ``smartpt train --config-file that.yaml`` runs the same job.

Resuming: the same command again continues the same sample stream, RLP counters and EMA weights from the newest
complete checkpoint (see :mod:`nemo_smartpt.bridge.run_dir` for what may change between the two).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml

from nemo_smartpt.bridge.train_config import TrainConfig, check_train_config, split_command_line
from nemo_smartpt.overrides import OverrideError, build_config, describe, parse_overrides

SMARTPT_SECTION = "smartpt"  # our settings inside a --cfg job / --config-file YAML


def main(args: list[str]) -> int:
    if "--help" in args or "-h" in args:
        print(_help())
        return 0
    args, config_file = _take_config_file(args)
    ours, bridge_overrides, print_config = split_command_line(args)
    if print_config:
        # Everything but the YAML goes to stderr, so `--cfg job > job.yaml` is a loadable file.
        with contextlib.redirect_stdout(sys.stderr):
            cfg, bridge = compose(ours, bridge_overrides, config_file)
            text = job_yaml(cfg, bridge)
        sys.stdout.write(text)
        sys.stdout.flush()
        return 0
    cfg, bridge = compose(ours, bridge_overrides, config_file)
    from nemo_smartpt.bridge.api import add_smartpt

    explicit = {_key(a) for a in args}
    sp = add_smartpt(
        bridge,
        cfg,
        save_interval=bridge.checkpoint.save_interval if "checkpoint.save_interval" in explicit else None,
        fit_rlp_context="rlp.max_context" not in explicit,
    )
    if sp.complete:
        print(f"run complete at step {sp.complete_at} ({sp.out})")
        return 0
    return train(sp)


def compose(ours: list[str], bridge_overrides: list[str], config_file: str | None):
    """Our settings and the Bridge ``ConfigContainer`` after every override (what ``add_smartpt`` receives)."""
    from nemo_smartpt.runtime import apply_cpu_runtime

    apply_cpu_runtime()
    base = _file_settings(config_file) if config_file else None
    cfg = build_config(TrainConfig, ours, base=base)
    check_train_config(cfg)
    from nemo_smartpt.bridge.api import resolve_out_dir

    out = resolve_out_dir(cfg)
    bridge = _load_config_file(config_file) if config_file else recipe_container(cfg, out)
    _apply_bridge_overrides(bridge, bridge_overrides)
    from nemo_smartpt.bridge.step_cap import apply_step_cap

    apply_step_cap(cfg, bridge)  # SMARTPT_MAX_STEPS (smoke tests, the README test): after every override
    return cfg, bridge


def recipe_container(cfg: TrainConfig, out: str):
    """The Bridge ``ConfigContainer`` of ``recipe=`` with our run directory and seed (before overrides)."""
    from nemo_smartpt.bridge.recipe import TinyModelConfig, cpu_pretrain_config, recipe_config
    from nemo_smartpt.reasoning.tokenizer import TokenizerError, load_tokenizer

    try:
        tokenizer = load_tokenizer(cfg.data.tokenizer)
    except TokenizerError as exc:
        raise OverrideError(f"data.tokenizer: {exc}") from None
    # The byte tokenizer is Bridge's NullTokenizer with EOD = 256 (its last id); a Hugging Face tokenizer directory
    # is loaded by Bridge itself (HuggingFaceTokenizer), so the model and the data agree on the vocabulary.
    vocab = tokenizer.eod + 1 if cfg.data.tokenizer == "byte" else tokenizer.vocab_size
    if cfg.recipe == "cpu_tiny":
        bridge = cpu_pretrain_config(None, out, model=TinyModelConfig(vocab_size=vocab), seed=cfg.seed)
    else:
        bridge = recipe_config(
            cfg.recipe, out, vocab_size=vocab, seed=cfg.seed, shrink=cfg.shrink, model_config=cfg.model_config
        )
    # Checkpoint into the run directory by default, so the same command resumes (users may override both).
    bridge.checkpoint.save = bridge.checkpoint.load = str(Path(out) / "checkpoints")
    return bridge


def _apply_bridge_overrides(bridge, overrides: list[str]) -> None:
    from megatron.bridge.training.utils.omegaconf_utils import process_config_with_overrides

    from nemo_smartpt.bridge.preflight import check_override_types

    try:
        process_config_with_overrides(bridge, cli_overrides=overrides)
    except Exception as exc:  # Bridge raises plain ValueErrors/OmegaConf errors naming the key
        raise OverrideError(f"Bridge config: {str(exc).splitlines()[0]}") from None
    check_override_types(bridge, overrides)


def _take_config_file(args: list[str]) -> tuple[list[str], str | None]:
    rest, path = [], None
    it = iter(args)
    for arg in it:
        if arg == "--config-file":
            path = next(it, None)
            if path is None:
                raise OverrideError("--config-file needs a path (a ConfigContainer YAML, e.g. from --cfg job)")
        elif arg.startswith("--config-file="):
            path = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    if path is not None and not Path(path).is_file():
        raise OverrideError(f"--config-file: no such file {path}")
    return rest, path


def _file_settings(path: str) -> dict | None:
    try:
        tree = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise OverrideError(f"--config-file {path}: not YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise OverrideError(f"--config-file {path}: expected a mapping (a ConfigContainer YAML)")
    return tree.get(SMARTPT_SECTION)


def _load_config_file(path: str):
    """A whole ConfigContainer YAML (with ``_target_``, as ``--cfg job`` and Bridge's ``run_config.yaml`` write it)
    through Bridge's ``ConfigContainer.from_yaml``; a partial YAML of Bridge settings is merged onto the default
    recipe by Bridge's ``process_config_with_overrides``. Our ``smartpt:`` section is read separately (Bridge's
    lenient loader ignores it)."""
    from megatron.bridge.training.config import ConfigContainer

    tree = yaml.safe_load(Path(path).read_text()) or {}
    try:
        if "_target_" in tree:
            return ConfigContainer.from_yaml(path)
        from megatron.bridge.training.utils.omegaconf_utils import process_config_with_overrides

        from nemo_smartpt.bridge.recipe import cpu_pretrain_config

        partial = {k: v for k, v in tree.items() if k != SMARTPT_SECTION}
        with tempfile.TemporaryDirectory() as tmp:
            merged = Path(tmp) / "bridge.yaml"
            merged.write_text(yaml.safe_dump(partial))
            return process_config_with_overrides(cpu_pretrain_config(None, "runs/train"), config_filepath=str(merged))
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise OverrideError(f"--config-file {path}: {first}") from None


def job_yaml(cfg: TrainConfig, bridge) -> str:
    """Bridge's own YAML of the container, with our settings as a ``smartpt:`` section and the schedule as a comment."""
    schedule = _schedule_preview(cfg, bridge)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bridge.yaml")
        bridge.to_yaml(path)  # Bridge's own serialisation of its ConfigContainer
        text = Path(path).read_text()
    ours = yaml.safe_dump({SMARTPT_SECTION: dataclasses.asdict(cfg)}, sort_keys=False)
    header = (
        "# smartpt train --cfg job: Megatron-Bridge's ConfigContainer, our settings under `smartpt:`.\n"
        "# Run it with: smartpt train --config-file THIS_FILE [key=value ...]\n"
        f"# schedule: {json.dumps(schedule)}\n"
    )
    return header + text + ours


def _schedule_preview(cfg: TrainConfig, bridge) -> dict:
    from nemo_smartpt.reasoning.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(cfg.data.tokenizer)
    prompt_tokens = len(tokenizer.encode_batch([cfg.rlp.thought_prompt])[0]) if cfg.rlp.thought_prompt else 0
    from nemo_smartpt.bridge.api import resolve_schedule

    return resolve_schedule(cfg, copy.deepcopy(bridge), prompt_tokens)


def train(sp) -> int:
    """``pretrain()`` on what :func:`add_smartpt` built; a stop by SIGTERM or ``train.exit_interval`` is a clean exit
    after Bridge saved a checkpoint."""
    from megatron.bridge.training.pretrain import pretrain

    from nemo_smartpt.bridge.launch import ensure_single_process_env
    from nemo_smartpt.bridge.run_dir import scan_checkpoints

    ensure_single_process_env()
    try:
        pretrain(sp.config, sp.forward_step, callbacks=sp.callbacks)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
        saved = scan_checkpoints(sp.config.checkpoint.save).complete
        if int(os.environ.get("RANK", "0")) == 0:
            print(
                f"[smartpt] stopped at step {saved} of {sp.schedule['total_steps']} with a checkpoint in "
                f"{sp.config.checkpoint.save}; the same command resumes",
                flush=True,
            )
        return 0
    return 0


def _key(arg: str) -> str:
    try:
        (override,) = parse_overrides([arg])
    except Exception:
        return ""
    return override.key_or_group


def _help() -> str:
    from nemo_smartpt.bridge.train_config import CONF_DIR

    presets = ", ".join(sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
    return "\n".join(
        [
            "usage: smartpt train [+experiment=NAME] [--config-file JOB.yaml] [key=value ...] [--cfg job]",
            "",
            f"presets (conf/experiment): {presets}",
            "Any key outside ours goes to Megatron-Bridge's ConfigContainer (model.*, train.*, optimizer.*, "
            "checkpoint.*, logger.*, ...).",
            "--cfg job prints the job as YAML on stdout (Bridge's ConfigContainer, ours under `smartpt:`) and exits;",
            "--config-file PATH starts from such a YAML (or any ConfigContainer YAML) instead of recipe=.",
            "The same command on an existing out_dir resumes it (resume.allow_changes=[KEY,...] lets settings differ).",
            "",
            describe(TrainConfig),
        ]
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
