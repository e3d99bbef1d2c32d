"""The ``smartpt`` entry point and the Hydra override grammar every subcommand shares."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from nemo_smartpt import cli
from nemo_smartpt.overrides import OverrideError, build_config, describe


@dataclass
class Inner:
    lr: float = 1e-3
    """learning rate"""
    extra: dict = field(default_factory=dict)


@dataclass
class Schema:
    name: str = "run"
    """what to call it"""
    steps: int = 10
    flags: list = field(default_factory=lambda: [1, 2])
    inner: Inner = field(default_factory=Inner)


def test_set_nested_and_typed_values():
    cfg = build_config(Schema, ["name=abc", "steps=7", "inner.lr=0.5", "flags=[3,4,5]"])
    assert (cfg.name, cfg.steps, cfg.inner.lr, cfg.flags) == ("abc", 7, 0.5, [3, 4, 5])
    assert isinstance(cfg, Schema) and isinstance(cfg.inner, Inner)


def test_plus_adds_only_new_keys_and_tilde_restores_default():
    cfg = build_config(Schema, ["+inner.extra.k=v", "steps=3", "~steps"])
    assert cfg.inner.extra == {"k": "v"}
    assert cfg.steps == 10
    with pytest.raises(OverrideError, match="already exists"):
        build_config(Schema, ["+steps=3"])


def test_unknown_key_and_bad_type_are_named():
    with pytest.raises(OverrideError, match="unknown key 'stepz'.*steps"):
        build_config(Schema, ["stepz=3"])
    with pytest.raises(OverrideError, match="steps"):
        build_config(Schema, ["steps=abc"])
    with pytest.raises(OverrideError, match="cannot parse"):
        build_config(Schema, ["steps=[1,"])


def test_describe_lists_fields_defaults_and_docs():
    text = describe(Schema)
    assert "name: str = 'run'" in text and "what to call it" in text and "steps: int = 10" in text


def test_help_lists_subcommands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("prepare", "plan", "train", "eval", "demo"):
        assert f"  {name}" in out


def test_unknown_command_fails(capsys):
    assert cli.main(["bogus"]) == 2
    assert "unknown command 'bogus'" in capsys.readouterr().err


def test_missing_command_module_reports_its_issue(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "later", cli.Command("nemo_smartpt.not_there_yet", "x", 99))
    assert cli.main(["later"]) == 3
    assert "issue #99" in capsys.readouterr().err


def test_bad_override_is_one_line_error(capsys):
    assert cli.main(["demo", "no_such_key=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'no_such_key'" in err and "Traceback" not in err


def test_console_script_and_module_entry_agree():
    module = subprocess.run([sys.executable, "-m", "nemo_smartpt", "--help"], capture_output=True, text=True)
    assert module.returncode == 0 and "commands:" in module.stdout
    script = subprocess.run(
        [sys.executable, "-c", "from nemo_smartpt.cli import main; main(['--help'])"], capture_output=True, text=True
    )
    assert script.stdout == module.stdout


@dataclass
class Required:
    path: str = "???"


def test_a_missing_mandatory_field_can_be_set_and_is_reported_when_not():
    assert build_config(Required, ["path=x"]).path == "x"
    with pytest.raises(OverrideError, match="incomplete config"):
        build_config(Required, [])
