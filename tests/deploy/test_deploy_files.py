"""The Dockerfile, the Slurm script and the README agree, and the parts that can be checked here parse."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            rows.append((keyword.upper(), " ".join(rest.split())))
    return rows


def test_dockerfile_builds_on_an_ngc_nemo_26_image_with_no_deps():
    rows = _dockerfile_instructions()
    args = dict(re.match(r"(\w+)=(\S+)", rest).groups() for kw, rest in rows if kw == "ARG")
    froms = [rest for kw, rest in rows if kw == "FROM"]
    assert len(froms) == 1
    image = froms[0].split()[0].replace("${NEMO_IMAGE}", args.get("NEMO_IMAGE", ""))
    assert re.fullmatch(r"nvcr\.io/nvidia/nemo:26\.\d\d(\.\d+)?", image), image
    runs = [rest for kw, rest in rows if kw == "RUN"]
    assert any("pip install --no-deps" in r and "-e ." in r for r in runs)
    assert "COPY" in {kw for kw, _ in rows}


def test_readme_documents_the_docker_and_slurm_commands():
    readme = (ROOT / "README.md").read_text()
    assert "docker build -t nemo_smartpt:latest ." in readme
    assert "sbatch examples/slurm/train.sbatch" in readme
    assert "pip install --no-deps -e ." in readme
    for target in ("make demo", "make test"):
        assert target in readme


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_sbatch_script_parses_and_passes_overrides_to_torchrun():
    script = ROOT / "examples" / "slurm" / "train.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "#SBATCH --nodes=" in text
    assert "--container-image=" in text
    assert re.search(r"torchrun[\s\\]+--nnodes", text)
    assert "-m nemo_smartpt train" in text and '"$@"' in text


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    assert "make test" in (ROOT / "README.md").read_text()
