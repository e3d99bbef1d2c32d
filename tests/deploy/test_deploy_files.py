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


def test_sbatch_script_is_requeue_safe():
    """--requeue, a SIGTERM ahead of the time limit, and a run directory that is not the job id."""
    text = (ROOT / "examples" / "slurm" / "train.sbatch").read_text()
    directives = [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("#SBATCH ")]
    assert "--requeue" in directives
    signal = [d for d in directives if d.startswith("--signal=")]
    assert len(signal) == 1 and re.fullmatch(r"--signal=(B:)?TERM@\d+", signal[0]), signal
    assert int(signal[0].rsplit("@", 1)[1]) >= 60  # time for a step and a checkpoint save
    assert "SLURM_JOB_ID" not in text.split("RUN_DIR=", 1)[1].split("\n", 1)[0]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_sbatch_script_resumes_in_the_same_run_directory_after_a_requeue(tmp_path):
    """The script itself, run twice as two jobs (a requeue gets a new restart count, a resubmission a new job id), with
    stand-ins for the cluster's srun/scontrol/torchrun (there is no Slurm here) that record what they were given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "torchrun.args"
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho node001\n")
    # srun: drop its own --options and run the command (the container is this machine).
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    (bin_dir / "torchrun").write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > {record}\necho "$RUN_DIR" >> {record}\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    script = ROOT / "examples" / "slurm" / "train.sbatch"
    seen = []
    for job_id, restart in (("101", "0"), ("101", "1"), ("202", "0")):
        env = {
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "SLURM_JOB_ID": job_id,
            "SLURM_RESTART_COUNT": restart,
            "SLURM_JOB_NODELIST": "node001",
            "SLURM_NNODES": "1",
            "SLURM_NODEID": "0",
            "RUN_ROOT": str(tmp_path / "runs"),
            "IMAGE": "img.sqsh",
            "DATA_DIR": str(tmp_path),
        }
        overrides = ["+experiment=volta", "train.train_iters=5", "data.catalog=/lustre/data/catalog.yaml"]
        subprocess.run(["bash", str(script), *overrides], env=env, cwd=tmp_path, check=True, capture_output=True)
        args = record.read_text().splitlines()
        seen.append(args)
        module = args.index("-m")
        assert args[module + 1 : module + 3] == ["nemo_smartpt", "train"]
        assert args[module + 3 :] == [
            f"out_dir={tmp_path / 'runs' / 'volta'}",
            *overrides,
            str(tmp_path / "runs" / "volta"),
        ]
    assert seen[0] == seen[1] == seen[2]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    assert "make test" in (ROOT / "README.md").read_text()
