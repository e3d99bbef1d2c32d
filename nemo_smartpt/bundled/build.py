"""Turn the bundled corpus into what a user would have: Megatron indexed datasets and a source catalog.

``ensure_bundled_catalog(dir)`` writes the raw jsonl (:mod:`nemo_smartpt.bundled.corpus`), runs ``smartpt prepare``'s
own code on every source with the built-in byte tokenizer, and writes ``catalog.yaml`` with the quality tier, category
and epoch cap of each source. It is idempotent: a finished directory (``catalog.yaml`` present, same spec) is reused.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import yaml

from nemo_smartpt.bundled.corpus import CORPUS_VERSION, SOURCE_META, CorpusSpec, write_corpus
from nemo_smartpt.world.build import TASKS_DIR, write_tasks

# Epoch caps of the bundled sources: small, clean sources may repeat, noisy crawl may not (the paper's pattern).
MAX_EPOCHS = {
    "crawl_high": 4,
    "crawl_medium": 2,
    "crawl_low": 1,
    "math": 8,
    "code": 8,
    "wiki": 8,
    "reasoning": 16,
}
SFT_FRACTION = 0.25
REASONING_SHARE = 0.2  # front-loaded reasoning: 20% of the phase it goes into (arXiv 2510.03264)


def ensure_bundled_catalog(directory: str | Path, spec: CorpusSpec | None = None, quiet: bool = True) -> Path:
    """Build (once) the bundled indexed datasets and catalog under ``directory``; return the catalog path."""
    from nemo_smartpt.reasoning.config import PrepareConfig
    from nemo_smartpt.reasoning.prepare import prepare
    from nemo_smartpt.reasoning.split import SplitConfig

    spec = spec or CorpusSpec()
    out = Path(directory)
    catalog_path = out / "catalog.yaml"
    stamp = out / "spec.json"
    wanted = {"spec": asdict(spec), "version": CORPUS_VERSION}
    if catalog_path.exists() and stamp.exists() and json.loads(stamp.read_text()) == wanted:
        if not (out / "tasks").is_dir():  # built before the corpus had lm-eval task files
            write_tasks(out, TASKS_DIR / "bundled")
        return catalog_path
    raw = write_corpus(out / "raw", spec)
    sources = []
    for name, path in raw.items():
        prefix = out / "indexed" / name
        prefix.parent.mkdir(parents=True, exist_ok=True)
        cfg = PrepareConfig(
            input=str(path),
            output_prefix=str(prefix),
            format="openthoughts" if name == "reasoning" else "text",
            tokenizer="byte",
            progress=not quiet,
            overwrite=True,  # a changed spec rebuilds the project's own bundled files in place
            # The data-matched split: a quarter of the reasoning questions go to SFT, disjoint from pretraining.
            split=SplitConfig(sft_fraction=SFT_FRACTION if name == "reasoning" else 0.0),
        )
        prepare(cfg)
        quality, category = SOURCE_META[name]
        entry = {
            "name": name,
            "prefix": f"indexed/{name}",
            "quality": quality,
            "category": category,
            "max_epochs": MAX_EPOCHS[name],
        }
        if category == "reasoning":
            entry.update(target_share=REASONING_SHARE, phases=["phase2"])
        sources.append(entry)
    header = (
        "# The bundled corpus of nemo_smartpt: synthetic text the project generates itself (see\n"
        "# nemo_smartpt/bundled/corpus.py), tokenized with the built-in byte tokenizer (vocab 258, EOD 256).\n"
    )
    catalog_path.write_text(header + yaml.safe_dump({"sources": sources}, sort_keys=False))
    write_tasks(out, TASKS_DIR / "bundled")  # lm-eval tasks over raw/eval_*.jsonl (bundled_knowledge, ...)
    stamp.write_text(json.dumps(wanted))
    return catalog_path
