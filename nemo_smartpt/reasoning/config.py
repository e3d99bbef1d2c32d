"""The settings of ``smartpt prepare``: one dataclass, the only home of their defaults.

Kept apart from :mod:`nemo_smartpt.reasoning.prepare` so that worker processes, which unpickle a
:class:`PrepareConfig`, import neither megatron-core nor torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nemo_smartpt.reasoning.render import RenderConfig, check_render_config
from nemo_smartpt.reasoning.schemas import FORMATS, MAPPED_KEYS, ReasoningDataError
from nemo_smartpt.reasoning.select import SelectConfig, check_select_config, load_preset
from nemo_smartpt.reasoning.split import SplitConfig, check_split_config


@dataclass
class PrepareConfig:
    """``smartpt prepare``: raw reasoning data -> Megatron ``.bin``/``.idx`` (+ SFT chat jsonl, stats)."""

    input: str = ""
    """jsonl or parquet files or globs, comma-separated (sorted, so record order is reproducible)."""
    output_prefix: str = ""
    """Writes ``<prefix>.bin``, ``<prefix>.idx``, ``<prefix>.stats.json``, ``<prefix>.skipped.jsonl``."""
    format: str = "auto"
    """Record layout: auto, openthoughts, nemotron, text or mapped (see ``nemo_smartpt.reasoning.schemas``)."""
    mapping: dict[str, str] = field(default_factory=dict)
    """For format=mapped: our field (question, thought, answer, response, system, domain, text) -> dotted path."""
    tokenizer: str = "byte"
    """``byte`` (built-in, offline) or a local path to a Hugging Face ``tokenizer.json`` or its directory."""
    eod_token: str = ""
    """End-of-document token of a Hugging Face tokenizer (empty = first known one in its vocabulary)."""
    workers: int = 1
    """Tokenizing processes; 1 tokenizes in this process. Output bytes do not depend on it."""
    chunk_size: int = 64
    """Records per task sent to a worker: big enough to amortise the IPC, small enough to keep memory flat."""
    on_error: str = "skip"
    """Malformed records: ``skip`` (logged with file and line, counted) or ``fail`` (stop, no output written)."""
    encoding_errors: str = "replace"
    """Invalid UTF-8 in jsonl: ``replace`` (U+FFFD, counted as utf8_repaired) or ``strict`` (a malformed record)."""
    max_doc_tokens: int = 0
    """Skip documents longer than this many tokens (``too_long``; 0 = no limit)."""
    selection: str = ""
    """Selection preset the ``select`` block starts from (shq, ldq, lmq, none); ``select.*`` overrides win."""
    progress: bool = True
    """Show a progress bar (docs/s, tokens/s) on stderr."""
    overwrite: bool = False
    """Replace an existing dataset under ``output_prefix`` (its files of the old run that this run does not write
    are removed); without it an existing dataset is refused."""
    allow_empty: bool = False
    """Accept a run that writes zero documents (otherwise it fails with the reason and writes nothing)."""
    group_by: str = ""
    """Record field (dotted path) whose value labels each document, e.g. a NeMo Curator classifier's
    ``quality_pred``: writes one dataset ``<output_prefix>_<label>`` per value (``smartpt catalog`` turns them into a
    catalog). Empty: one dataset."""
    render: RenderConfig = field(default_factory=RenderConfig)
    """How examples become pretraining text and SFT chats."""
    select: SelectConfig = field(default_factory=SelectConfig)
    """Quality / diversity / quantity selection, de-duplication and decontamination."""
    split: SplitConfig = field(default_factory=SplitConfig)
    """The pretraining / SFT split of the reasoning budget."""


class PrepareConfigError(ReasoningDataError):
    """A ``prepare`` setting that cannot work."""


def check_prepare_config(cfg: PrepareConfig) -> None:
    """Validate every setting before any file is opened."""
    if not cfg.input:
        raise PrepareConfigError("input is required: input=FILE_OR_GLOB[,FILE_OR_GLOB...]")
    if not cfg.output_prefix:
        raise PrepareConfigError("output_prefix is required: output_prefix=DIR/NAME")
    if cfg.format not in FORMATS:
        raise PrepareConfigError(f"format must be one of {', '.join(FORMATS)}, got {cfg.format!r}")
    if cfg.format == "mapped" and not cfg.mapping:
        raise PrepareConfigError("format=mapped needs a mapping, e.g. +mapping.question=prompt +mapping.answer=output")
    unknown = sorted(set(cfg.mapping) - set(MAPPED_KEYS))
    if unknown:
        raise PrepareConfigError(f"mapping has unknown keys {unknown} (known: {', '.join(MAPPED_KEYS)})")
    if cfg.mapping and cfg.format != "mapped":
        raise PrepareConfigError(f"mapping is only read with format=mapped (format is {cfg.format!r})")
    if cfg.workers < 1:
        raise PrepareConfigError(f"workers must be >= 1, got {cfg.workers}")
    if cfg.chunk_size < 1:
        raise PrepareConfigError(f"chunk_size must be >= 1, got {cfg.chunk_size}")
    if cfg.on_error not in ("skip", "fail"):
        raise PrepareConfigError(f"on_error must be skip or fail, got {cfg.on_error!r}")
    if cfg.encoding_errors not in ("replace", "strict"):
        raise PrepareConfigError(f"encoding_errors must be replace or strict, got {cfg.encoding_errors!r}")
    if cfg.group_by and cfg.split.sft_fraction > 0.0:
        raise PrepareConfigError("group_by writes one pretraining dataset per label; set split.sft_fraction=0")
    check_render_config(cfg.render)
    check_select_config(cfg.select)
    check_split_config(cfg.split)


def config_from_overrides(overrides: list[str]) -> PrepareConfig:
    """Build a :class:`PrepareConfig` from Hydra overrides; ``selection=NAME`` seeds ``select`` from its preset."""
    from nemo_smartpt.overrides import build_config

    base = None
    cooked = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key.lstrip("+") == "selection" and value:
            base = {"select": load_preset(value)}
        if sep and key == "input" and "," in value and value[:1] not in ("'", '"', "["):
            # Hydra reads a bare a,b as a sweep; input is one comma-separated string, so quote it for the user.
            item = f"input='{value}'"
        cooked.append(item)
    return build_config(PrepareConfig, cooked, base=base)
