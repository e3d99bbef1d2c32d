"""The Hugging Face config a Bridge recipe builds its model from, found locally so recipes work offline.

Most Bridge recipes build ``cfg.model`` with ``AutoBridge.from_hf_pretrained("meta-llama/Llama-3.2-1B")``: Bridge
asks transformers' ``AutoConfig`` for the hub id, which needs the Hub or the Hugging Face cache. On an air-gapped
node that fails (after retries) unless the cache already holds the config. This module feeds a local ``config.json``
to that same lookup, without touching the recipe:

1. :func:`recipe_hf_requests` reads, from the recipe function's source, the hub ids (and pinned revisions) it passes
   to ``from_hf_pretrained``;
2. each id is resolved to a local config (``model_config=DIR``; or, with ``model_config=auto``, the user's Hugging
   Face cache, else the copy this project carries under ``conf/hf/<org>/<name>/config.json``, architecture values
   only, no weights and no tokenizer);
3. :func:`offline_hub_cache` lays those files out as a Hugging Face hub cache (``models--org--name/snapshots/<rev>/``
   + ``refs/main``) in a temporary directory and points ``huggingface_hub`` at it in offline mode while the recipe
   runs. transformers then resolves the recipe's own hub id from that cache exactly as it would from ``HF_HOME`` with
   ``HF_HUB_OFFLINE=1``; Bridge builds the real provider from it.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import shutil
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from nemo_smartpt.overrides import OverrideError

CARRIED_DIR = Path(__file__).resolve().parents[2] / "conf" / "hf"
"""Published ``config.json`` files of the model families the CPU tests use, as ``<org>/<name>/config.json``."""
LOCAL_REVISION = "local"


class ModelConfigError(OverrideError):
    """A recipe's Hugging Face config cannot be found locally or on the Hub (one line: what to do)."""


@dataclass(frozen=True)
class HFRequest:
    """One ``from_hf_pretrained(repo_id, revision=...)`` call of a recipe."""

    repo_id: str
    revision: str | None = None


def recipe_hf_requests(fn: Callable) -> list[HFRequest]:
    """Hub ids (with pinned revisions) the recipe function passes to ``AutoBridge.from_hf_pretrained``.

    Arguments are string literals, local names assigned a literal in the function, or module constants; anything
    else (a computed id) is not listed and the recipe's own lookup handles it.
    """
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return []
    local_strings = {
        target.id: node.value.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    module_globals = getattr(fn, "__globals__", {})

    def value(node: ast.AST | None) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name):
            found = local_strings.get(node.id, module_globals.get(node.id))
            return found if isinstance(found, str) else None
        return None

    requests: list[HFRequest] = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr != "from_hf_pretrained" or not node.args:
            continue
        repo_id = value(node.args[0])
        revision = value(next((k.value for k in node.keywords if k.arg == "revision"), None))
        if repo_id and HFRequest(repo_id, revision) not in requests:
            requests.append(HFRequest(repo_id, revision))
    return requests


def carried_config(repo_id: str) -> Path | None:
    """The directory of this project's copy of ``repo_id``'s ``config.json``, if it carries one."""
    directory = CARRIED_DIR / repo_id
    return directory if (directory / "config.json").is_file() else None


def cached_config(request: HFRequest) -> Path | None:
    """The directory holding ``request``'s ``config.json`` in the user's Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(request.repo_id, "config.json", revision=request.revision)
    return Path(found).parent if isinstance(found, str) else None


def resolve_model_configs(requests: list[HFRequest], model_config: str) -> dict[HFRequest, Path] | None:
    """Local config directory per request, or None to leave the recipe's lookup alone.

    ``model_config``: ``auto`` (the user's HF cache, else the carried copy; None when neither has every id),
    ``hub`` (None: the recipe's own lookup), or a directory with a ``config.json`` (used for the recipe's model).
    """
    if model_config == "hub" or not requests:
        return None
    if model_config != "auto":
        directory = Path(model_config).expanduser()
        if not (directory / "config.json").is_file():
            raise ModelConfigError(
                f"model_config={model_config}: no config.json there (give the directory of a Hugging Face model, "
                "e.g. the one holding meta-llama/Llama-3.2-1B's config.json)"
            )
        return dict.fromkeys(requests, directory.resolve())
    resolved = {}
    for request in requests:
        directory = cached_config(request) or carried_config(request.repo_id)
        if directory is None:
            return None
        resolved[request] = directory
    return resolved


def missing_config_message(recipe: str, requests: list[HFRequest]) -> str:
    """One line: the recipe's HF config is neither local nor reachable, and the two ways to fix it."""
    ids = ", ".join(r.repo_id for r in requests) or "its Hugging Face model"
    return (
        f"recipe {recipe} builds its model from the Hugging Face config of {ids}, which is not in the Hugging Face "
        f"cache and the Hub is not reachable: pass model_config=DIR (a directory with that config.json), or fill "
        f"the cache where there is internet (`hf download {ids.split(', ')[0]} config.json`, same HF_HOME) and "
        "run with HF_HUB_OFFLINE=1"
    )


@contextlib.contextmanager
def offline_hub_cache(configs: dict[HFRequest, Path]) -> Iterator[Path]:
    """A temporary Hugging Face hub cache holding ``configs`` under their hub ids, active and offline inside.

    huggingface_hub reads ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` into ``huggingface_hub.constants`` at import and
    transformers reads those constants at every lookup; setting them here is what the environment variables do for
    a fresh process, limited to the recipe call (the user's own cache and mode are restored afterwards).
    """
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    root = Path(tempfile.mkdtemp(prefix="smartpt_hf_"))
    try:
        for request, directory in configs.items():
            repo = root / repo_folder_name(repo_id=request.repo_id, repo_type="model")
            # A pinned commit is looked up as snapshots/<commit>; a branch or tag through refs/<name>.
            revisions = {"main", request.revision or "main"}
            for revision in revisions:
                snapshot = revision if _is_commit(revision) else LOCAL_REVISION
                (repo / "snapshots" / snapshot).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(directory / "config.json", repo / "snapshots" / snapshot / "config.json")
                if not _is_commit(revision):
                    (repo / "refs").mkdir(exist_ok=True)
                    (repo / "refs" / revision).write_text(LOCAL_REVISION)
        saved = constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE
        constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = str(root), True
        try:
            yield root
        finally:
            constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = saved
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _is_commit(revision: str) -> bool:
    return len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)
