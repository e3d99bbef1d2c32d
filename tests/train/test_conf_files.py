"""Every YAML under conf/ loads into its schema, and the reasoning-arm presets keep exactly their source."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from omegaconf import OmegaConf

from nemo_smartpt.blend.catalog import catalog_from_dict
from nemo_smartpt.bridge.data import catalog_text
from nemo_smartpt.bridge.train_config import CONF_DIR, TrainConfig, check_train_config, split_command_line
from nemo_smartpt.overrides import OverrideError, build_config
from nemo_smartpt.reasoning.select import SelectConfig, load_preset
from nemo_smartpt.rlp.config import RLPConfig

PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", PRESETS)
def test_experiment_preset_resolves(name):
    ours, bridge, _ = split_command_line([f"+experiment={name}"])
    cfg = build_config(TrainConfig, ours)
    check_train_config(cfg)
    assert cfg.experiment == name
    assert all(o.split("=")[0].split(".")[0] in {"model", "train", "optimizer", "checkpoint"} for o in bridge)


def test_the_four_learners_and_the_reasoning_arms_exist():
    assert {"pascal", "volta", "ampere", "hopper"} <= set(PRESETS)
    assert {"reasoning_base", "reasoning_shq", "reasoning_ldq", "reasoning_lmq"} <= set(PRESETS)


@pytest.mark.parametrize("path", sorted((CONF_DIR / "reasoning").glob("*.yaml")), ids=lambda p: p.stem)
def test_reasoning_selection_preset_fits_select_config(path):
    values = load_preset(path.stem)
    merged = OmegaConf.merge(OmegaConf.structured(SelectConfig), values)
    assert isinstance(OmegaConf.to_object(merged), SelectConfig)


def test_rlp_defaults_file_fits_rlp_config():
    merged = OmegaConf.merge(OmegaConf.structured(RLPConfig), OmegaConf.load(CONF_DIR / "rlp" / "default.yaml"))
    cfg = OmegaConf.to_object(merged)
    cfg.validate()
    assert (cfg.num_rollouts, cfg.max_thought_tokens, cfg.ema_decay) == (16, 2048, 0.999)


@pytest.mark.parametrize("path", sorted((CONF_DIR / "catalog").glob("*.yaml")), ids=lambda p: p.stem)
def test_catalog_files_are_valid_catalogs(path):
    data = yaml.safe_load(path.read_text())
    catalog = catalog_from_dict(data, base_dir=str(path.parent), path=str(path), read_counts=lambda p: (10_000, 100))
    assert catalog.sources


@pytest.mark.parametrize("arm", ["shq", "ldq", "lmq"])
def test_reasoning_arm_keeps_only_its_source_at_20_percent_of_phase_2(arm):
    ours, _, _ = split_command_line(
        [f"+experiment=reasoning_{arm}", f"data.catalog={CONF_DIR / 'catalog' / 'reasoning_arms.yaml'}"]
    )
    cfg = build_config(TrainConfig, ours)
    written = yaml.safe_load(catalog_text(cfg))
    reasoning = [s for s in written["sources"] if s["category"] == "reasoning"]
    assert [s["name"] for s in reasoning] == [f"reasoning_{arm}"]
    assert reasoning[0]["target_share"] == 0.2 and reasoning[0]["phases"] == ["phase2"]
    assert Path(reasoning[0]["prefix"]).is_absolute()
    assert {s["name"] for s in written["sources"]} >= {"crawl_high", "math"}


def test_reasoning_base_drops_every_reasoning_source():
    ours, _, _ = split_command_line(
        ["+experiment=reasoning_base", f"data.catalog={CONF_DIR / 'catalog' / 'reasoning_arms.yaml'}"]
    )
    written = yaml.safe_load(catalog_text(build_config(TrainConfig, ours)))
    assert not [s for s in written["sources"] if s["category"] == "reasoning"]


def test_unknown_reasoning_source_is_named():
    cfg = SimpleNamespace(
        data=SimpleNamespace(
            catalog=str(CONF_DIR / "catalog" / "reasoning_arms.yaml"),
            reasoning=True,
            reasoning_sources=["reasoning_xyz"],
            reasoning_share=None,
            reasoning_phases=None,
        )
    )
    with pytest.raises(OverrideError, match="reasoning_xyz"):
        catalog_text(cfg)


def test_preset_values_survive_hydra_quoting():
    from nemo_smartpt.bridge.train_config import flatten
    from nemo_smartpt.overrides import parse_overrides

    tricky = "Think, then {think_close}: a=b [c] 'quoted' back\\slash\\"
    (override,) = parse_overrides(flatten({"rlp": {"thought_prompt": tricky}}))
    assert override.key_or_group == "rlp.thought_prompt" and override.value() == tricky


def test_bad_rlp_override_is_named_as_an_override_error():
    cfg = build_config(TrainConfig, ["rlp.generation_engine=vllm"])
    with pytest.raises(OverrideError, match=r"rlp\.generation_engine: 'vllm' is not one of"):
        check_train_config(cfg)
    check_train_config(build_config(TrainConfig, ["rlp.generation_engine=dynamic", "rlp.dynamic_max_requests=null"]))
    with pytest.raises(OverrideError, match=r"rlp\.kl_beta: must be 0"):
        check_train_config(build_config(TrainConfig, ["rlp.kl_beta=0.001"]))
