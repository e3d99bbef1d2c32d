"""Launch ``smartpt train`` with NeMo-Run: on this machine (``LocalExecutor``) or on Slurm (``SlurmExecutor``).

    # here, one process (or --nproc N under torchrun); every trailing argument is a smartpt train override
    python examples/nemo_run/launch.py --executor local +experiment=volta train.train_iters=100

    # Slurm + pyxis: 2 nodes x 8 GPUs under torchrun, SIGTERM 5 minutes before the time limit, requeue-safe
    python examples/nemo_run/launch.py --executor slurm --account ACCT --partition batch \\
        --container-image /lustre/images/nemo_smartpt.sqsh --nodes 2 --gpus-per-node 8 --time 04:00:00 \\
        --run-root /lustre/runs --mount /lustre:/lustre \\
        +experiment=hopper recipe=vanilla_gpt data.catalog=/lustre/data/catalog.yaml train.train_iters=100000

    # write the sbatch script without submitting it (the path is printed)
    python examples/nemo_run/launch.py --executor slurm --dryrun ... +experiment=volta

The task is ``python -m nemo_smartpt train <overrides>`` (a ``run.Script``), the same command as on the command
line. The run directory is ``<run-root>/<name>`` (``--name`` defaults to the experiment preset), the same for every
requeue of the job, so a requeued or resubmitted job resumes from its last checkpoint.

Megatron-Bridge's NeMo-Run plugins (``megatron.bridge.recipes.run_plugins``) apply where they fit:
``PreemptionPlugin`` on Slurm (``--signal=TERM@<preempt-time>`` and Bridge's exit-signal handler, so the job saves a
checkpoint before the time limit), ``FaultTolerancePlugin`` with ``--fault-tolerance`` (nvidia-resiliency-ext's
``ft_launcher``, in the NGC container; its ``ft.*`` overrides need a ConfigContainer YAML with an ``ft:`` section,
passed as ``--config-file``) and ``WandbPlugin`` with ``--wandb-project`` (active when ``WANDB_API_KEY``
is set). The plugins add Hydra-style Bridge overrides (``train.exit_signal_handler=True``, ``logger.wandb_project=``)
that ``smartpt train`` passes to Bridge's ConfigContainer.
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--executor", choices=("local", "slurm"), default="local")
    parser.add_argument("--name", default="", help="experiment name; default: the +experiment= preset, else 'train'")
    parser.add_argument("--run-root", default="runs", help="run directories live in <run-root>/<name>")
    parser.add_argument("--dryrun", action="store_true", help="write the job (sbatch script) without running it")
    parser.add_argument("--nproc", type=int, default=1, help="local: processes under torchrun (TP x PP x DP)")
    slurm = parser.add_argument_group("slurm")
    slurm.add_argument("--account", default=os.environ.get("SLURM_ACCOUNT", "account"))
    slurm.add_argument("--partition", default=os.environ.get("SLURM_PARTITION"))
    slurm.add_argument("--nodes", type=int, default=1)
    slurm.add_argument("--gpus-per-node", type=int, default=8)
    slurm.add_argument("--time", default="04:00:00")
    slurm.add_argument("--container-image", default="nemo_smartpt.sqsh")
    slurm.add_argument("--mount", action="append", default=[], help="container mount SRC:DST (repeatable)")
    slurm.add_argument("--preempt-time", type=int, default=300, help="seconds before the time limit to send SIGTERM")
    slurm.add_argument(
        "--fault-tolerance",
        action="store_true",
        help="Bridge's FaultTolerancePlugin (ft_launcher); needs a --config-file whose ConfigContainer has an ft: section",
    )
    slurm.add_argument("--wandb-project", default="", help="Bridge's WandbPlugin (needs WANDB_API_KEY)")
    slurm.add_argument("--ssh-host", default="", help="submit over SSH from a workstation (default: on a login node)")
    slurm.add_argument("--ssh-user", default=os.environ.get("USER", ""))
    slurm.add_argument("--remote-job-dir", default="", help="NeMo-Run's job files on the cluster (with --ssh-host)")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="smartpt train overrides (key=value ...)")
    return parser.parse_args(argv)


def experiment_name(args: argparse.Namespace) -> str:
    if args.name:
        return args.name
    for item in args.overrides:
        if item.startswith("+experiment=") or item.startswith("experiment="):
            return item.split("=", 1)[1]
    return "train"


def train_args(args: argparse.Namespace, name: str) -> list[str]:
    """``train <overrides>``, with ``out_dir`` pinned to ``<run-root>/<name>`` unless the user set it."""
    overrides = [a for a in args.overrides if a != "--"]
    if not any(a.split("=", 1)[0].lstrip("+") == "out_dir" for a in overrides):
        overrides.append(f"out_dir={os.path.join(args.run_root, name)}")
    return ["train", *overrides]


def local_executor(args: argparse.Namespace):
    import nemo_run as run

    executor = run.LocalExecutor(ntasks_per_node=args.nproc, launcher="torchrun" if args.nproc > 1 else None)
    # The task inherits this environment (PYTHONPATH, SMARTPT_MAX_STEPS, ...), as `smartpt train` would.
    executor.env_vars.update({k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "SMARTPT_MAX_STEPS")})
    return executor


def slurm_executor(args: argparse.Namespace):
    import nemo_run as run

    if args.ssh_host:
        tunnel = run.SSHTunnel(host=args.ssh_host, user=args.ssh_user, job_dir=args.remote_job_dir)
    else:
        tunnel = run.LocalTunnel(job_dir=os.path.join(os.path.abspath(args.run_root), ".nemo_run"))
    executor = run.SlurmExecutor(
        account=args.account,
        partition=args.partition,
        nodes=args.nodes,
        ntasks_per_node=args.gpus_per_node,
        gpus_per_node=args.gpus_per_node,
        time=args.time,
        exclusive=True,
        container_image=args.container_image,
        container_mounts=list(args.mount),
        tunnel=tunnel,
        # The container already holds the package (Dockerfile: pip install -e .), so `python -m nemo_smartpt` runs
        # from any directory: nothing to ship.
        packager=run.Packager(),
        # Requeue on node failure or preemption; the stable out_dir makes the requeued job resume.
        additional_parameters={"requeue": True},
        launcher="torchrun",
        job_name_prefix="smartpt-",
    )
    executor.env_vars.update({"PYTHONUNBUFFERED": "1", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"})
    return executor


def plugins_for(args: argparse.Namespace, name: str) -> list:
    if args.executor == "local" and not args.wandb_project:
        return []  # none applies: skip importing megatron.bridge in the launcher
    from nemo_smartpt.bridge.console import install_console_filters
    from nemo_smartpt.runtime import apply_cpu_runtime

    install_console_filters()
    apply_cpu_runtime()  # `import megatron.bridge` on a CPU login node or workstation needs the CPU shims
    from megatron.bridge.recipes.run_plugins import FaultTolerancePlugin, PreemptionPlugin, WandbPlugin

    plugins = []
    if args.executor == "slurm":
        plugins.append(PreemptionPlugin(preempt_time=args.preempt_time, enable_exit_handler=True))
        if args.fault_tolerance:
            plugins.append(FaultTolerancePlugin())
    if args.wandb_project:
        plugins.append(WandbPlugin(project=args.wandb_project, name=name, save_dir=os.path.join(args.run_root, name)))
    return plugins


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.fault_tolerance and not any(a.startswith("--config-file") for a in args.overrides):
        # The plugin adds ft.enable_ft_package=true / ft.calc_ft_timeouts=true, and Bridge can override keys of an
        # ft: section only where the config has one (a recipe's ConfigContainer leaves ft=None).
        print(
            "launch: --fault-tolerance needs `--config-file job.yaml` among the overrides, with an `ft:` section in it "
            "(smartpt train ... --cfg job > job.yaml, then add `ft: {enable_ft_package: true}`)",
            file=sys.stderr,
        )
        return 2
    import nemo_run as run

    name = experiment_name(args)
    # Locally the interpreter running this launcher (its environment has the package); in the container, its python.
    python = sys.executable if args.executor == "local" else "python"
    task = run.Script(path="nemo_smartpt", entrypoint=python, m=True, args=train_args(args, name))
    executor = local_executor(args) if args.executor == "local" else slurm_executor(args)
    plugins = plugins_for(args, name)
    with run.Experiment(f"smartpt-{name}", executor=executor, log_level="WARN") as exp:
        exp.add(task, name=name, plugins=plugins, tail_logs=True)
        if args.dryrun:
            exp.dryrun(log=True, delete_exp_dir=False)
            for root, _, files in os.walk(exp._exp_dir):
                for file in files:
                    if file.endswith("_sbatch.sh"):
                        print(f"sbatch script: {os.path.join(root, file)}")
            return 0
        exp.run(sequential=True, tail_logs=True)
    # Leaving the experiment waited for its jobs (Slurm: for the submission only, the job runs on).
    from torchx.specs import AppState

    failed = [f"{job.id} ({job.state})" for job in exp.jobs if job.state != AppState.SUCCEEDED]
    if args.executor == "local" and failed:
        print(f"launch: {', '.join(failed)} did not succeed; logs under {exp._exp_dir}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
