"""``recipe=NAME``: which Megatron-Bridge recipe function a name means.

Accepted, in this order:
- ``cpu_tiny``: our tiny GPT (:func:`nemo_smartpt.bridge.recipe.cpu_pretrain_config`), the default;
- the short names kept from earlier releases (:data:`ALIASES`);
- ``package.module:function`` for a recipe anywhere on the Python path (a user's own);
- any recipe function exported by ``megatron.bridge.recipes`` (``llama32_1b_pretrain_1gpu_h100_bf16_config``,
  ``qwen3_600m_pretrain_1gpu_h100_bf16_config``, ...).

An unknown name fails with one line listing the closest exported names.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable

from nemo_smartpt.overrides import OverrideError

CPU_TINY = "cpu_tiny"
ALIASES = {
    "vanilla_gpt": "megatron.bridge.recipes.gpt.h100.vanilla_gpt:vanilla_gpt_pretrain_1gpu_h100_bf16_config",
    # The talk's hybrid Mamba-2 case (Nemotron-Nano-12B-v2); needs mamba-ssm, i.e. the NGC container on a GPU.
    "nemotron_nano_12b_v2": (
        "megatron.bridge.recipes.nemotronh.h100.nemotron_nano_v2:nemotron_nano_12b_v2_pretrain_4gpu_h100_bf16_config"
    ),
}


class RecipeError(OverrideError):
    """A recipe name that does not resolve, or a recipe that cannot run here (one line: what to do)."""


def exported_recipes() -> dict[str, Callable]:
    """Recipe functions ``megatron.bridge.recipes`` exports (names ending in ``_config``)."""
    import megatron.bridge.recipes as recipes

    return {
        name: obj
        for name, obj in vars(recipes).items()
        if name.endswith("_config") and not name.startswith("_") and callable(obj) and not isinstance(obj, type)
    }


def resolve_recipe(name: str) -> tuple[str, Callable]:
    """``(qualified name, function)`` of a recipe name (not ``cpu_tiny``, which is ours)."""
    target = ALIASES.get(name, name)
    if ":" in target:
        module_name, _, function = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise RecipeError(f"recipe={name}: cannot import module {module_name!r} ({exc})") from None
        fn = getattr(module, function, None)
        if not callable(fn):
            raise RecipeError(f"recipe={name}: module {module_name!r} has no function {function!r}")
        return target, fn
    exported = exported_recipes()
    if name in exported:
        fn = exported[name]
        return f"{fn.__module__}:{fn.__name__}", fn
    candidates = [CPU_TINY, *ALIASES, *exported]
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    hint = f"closest: {', '.join(close)}" if close else f"e.g. {CPU_TINY}, llama32_1b_pretrain_1gpu_h100_bf16_config"
    raise RecipeError(
        f"unknown recipe {name!r} ({hint}); recipe= takes {CPU_TINY}, a function exported by "
        "megatron.bridge.recipes, or module:function"
    )
