"""Run training beyond one process: `accelerate launch` argument lists and Slurm sbatch scripts.

accelerate is the distributed engine; prefpilot only builds its command line (argument lists, never
shell strings) and points it at `python -m prefpilot.train.entry`, whose rank 0 writes the run directory.
"""
from __future__ import annotations

import re
import shlex
import shutil
import sys


def accelerate_argv(config_path: str, run_dir: str, *, num_processes: int = 1, num_machines: int = 1,
                    machine_rank: int = 0, main_process_ip: str | None = None, main_process_port: int | None = None,
                    fsdp: str | None = None, deepspeed: str | None = None, cpu: bool | None = None,
                    resume: bool = False, max_bad_rows: int = 0, python: str | None = None) -> list[str]:
    if fsdp and deepspeed:
        from ..errors import PrefpilotError
        raise PrefpilotError("use --fsdp or --deepspeed, not both", code="usage")
    if cpu is None:
        cpu = shutil.which("nvidia-smi") is None
    argv = [python or sys.executable, "-m", "accelerate.commands.launch",
            "--num_processes", str(num_processes), "--num_machines", str(num_machines),
            "--machine_rank", str(machine_rank), "--mixed_precision", "no", "--dynamo_backend", "no"]
    if main_process_ip:
        argv += ["--main_process_ip", main_process_ip]
    if main_process_port:
        argv += ["--main_process_port", str(main_process_port)]
    if num_processes * num_machines > 1 and not (fsdp or deepspeed):
        # torchrun-style launcher; on a CPU-only machine torch.distributed falls back to gloo
        # (accelerate's --cpu would route several processes through mpirun instead).
        argv += ["--multi_gpu"]
    elif cpu and not (fsdp or deepspeed):
        argv += ["--cpu"]
    if fsdp:
        argv += ["--use_fsdp", "--config_file", fsdp]
    if deepspeed:
        argv += ["--use_deepspeed", "--deepspeed_config_file", deepspeed]
    argv += ["-m", "prefpilot.train.entry", config_path, "--run-dir", run_dir]
    if resume:
        argv.append("--resume")
    if max_bad_rows:
        argv += ["--max-bad-rows", str(max_bad_rows)]
    return argv


_SLURM_WORD = re.compile(r"^[A-Za-z0-9._:+\-]+$")  # job names, partitions, time limits: no spaces, quotes or newlines


def _slurm_checked(name: str, value: str, word: bool) -> str:
    from ..errors import PrefpilotError
    if any(c in value for c in "\n\r\0"):
        raise PrefpilotError(f"--{name} {value!r}: a newline would start a new line of the batch script",
                             code="usage")
    if word and not _SLURM_WORD.match(value):
        raise PrefpilotError(f"--{name} {value!r}: use letters, digits and . _ : + - only", code="usage")
    return value


def slurm_script(config_path: str, run_dir: str, *, nodes: int = 2, gpus_per_node: int = 8, job_name: str = "prefpilot",
                 time_limit: str = "24:00:00", fsdp: str | None = None, deepspeed: str | None = None,
                 partition: str | None = None, python: str | None = None) -> str:
    """An sbatch script: one task per node, each running accelerate launch with its node rank.

    ``python``: the interpreter the nodes run, by default this one (sys.executable: the venv that has prefpilot,
    which a cluster sees on its shared filesystem; a bare `python` works only from an activated venv).

    Every value from the caller is either checked to be a plain word (#SBATCH lines) or shell-quoted; the
    per-node variables ($SLURM_NODEID, $MASTER_ADDR) are expanded by the task's own shell."""
    for name, value, word in (("config", config_path, False), ("run-dir", run_dir, False),
                              ("job-name", job_name, True), ("time", time_limit, True),
                              ("partition", partition or "x", True), ("fsdp", fsdp or "", False),
                              ("deepspeed", deepspeed or "", False)):
        _slurm_checked(name, value, word)
    if any(c in run_dir for c in '"\\'):  # an #SBATCH line cannot quote these: a quote would end --output early
        from ..errors import PrefpilotError
        raise PrefpilotError(f"--run-dir {run_dir!r}: a quote or backslash cannot be written into an #SBATCH line; "
                             "choose a folder name without them", code="usage")
    launch = accelerate_argv(config_path, run_dir, num_processes=nodes * gpus_per_node, num_machines=nodes,
                             machine_rank=0, main_process_ip="$MASTER_ADDR", main_process_port=29500,
                             fsdp=fsdp, deepspeed=deepspeed, cpu=False, python=python or sys.executable)
    i = launch.index("--machine_rank")
    launch[i + 1] = "$SLURM_NODEID"
    # inside the task: variables in double quotes (expanded there), everything else quoted literally
    inner = " ".join(f'"{a}"' if a in ("$SLURM_NODEID", "$MASTER_ADDR") else shlex.quote(a) for a in launch)
    output = run_dir.replace("%", "%%") + "/slurm-%j.out"  # Slurm expands %u, %x... in --output; mkdir does not
    lines = ["#!/bin/bash", f"#SBATCH --job-name={job_name}", f"#SBATCH --nodes={int(nodes)}",
             "#SBATCH --ntasks-per-node=1", f"#SBATCH --gpus-per-node={int(gpus_per_node)}",
             f"#SBATCH --time={time_limit}",
             f'#SBATCH --output="{output}"' if " " in output else f"#SBATCH --output={output}"]
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    lines += ["set -euo pipefail",
              "export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)",
              f"mkdir -p {shlex.quote(run_dir)}",
              "# one accelerate launcher per node; each starts gpus_per_node processes",
              f"srun bash -c {shlex.quote(inner)}", ""]
    return "\n".join(lines)
