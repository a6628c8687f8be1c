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
                 time_limit: str | None = "24:00:00", fsdp: str | None = None, deepspeed: str | None = None,
                 partition: str | None = None, account: str | None = None, python: str | None = None,
                 output: str | None = None, resume: bool = False, signal_before_s: int | None = None,
                 requeue: bool = False, run_manager: bool = False, max_bad_rows: int = 0) -> str:
    """An sbatch script: one task per node, each running accelerate launch with its node rank.

    ``python``: the interpreter the nodes run, by default this one (sys.executable: the venv that has prefpilot,
    which a cluster sees on its shared filesystem; a bare `python` works only from an activated venv).
    ``gpus_per_node=0``: CPU nodes, one process each (gloo). The main address is the first node's NodeAddr
    (its name where Slurm has none), the port is derived from the job id: nothing is set by hand per node.
    ``signal_before_s``: SIGTERM that many seconds before the time limit, to every task (the trainer saves a
    checkpoint and stops). ``requeue``: a requeued or preempted job continues from its checkpoint
    (``--resume`` when SLURM_RESTART_COUNT > 0). ``run_manager``: the trainer logs to the job's output
    (``--output``, default train.log in the run dir), the layout `prefpilot runs` reads.

    Every value from the caller is either checked to be a plain word (#SBATCH lines) or shell-quoted; the
    per-node variables ($SLURM_NODEID, $MASTER_ADDR) are expanded by the task's own shell."""
    for name, value, word in (("config", config_path, False), ("run-dir", run_dir, False),
                              ("job-name", job_name, True), ("time", time_limit or "x", True),
                              ("partition", partition or "x", True), ("account", account or "x", True),
                              ("fsdp", fsdp or "", False), ("deepspeed", deepspeed or "", False)):
        _slurm_checked(name, value, word)
    if any(c in run_dir for c in '"\\'):  # an #SBATCH line cannot quote these: a quote would end --output early
        from ..errors import PrefpilotError
        raise PrefpilotError(f"--run-dir {run_dir!r}: a quote or backslash cannot be written into an #SBATCH line; "
                             "choose a folder name without them", code="usage")
    nodes, gpus_per_node = int(nodes), int(gpus_per_node)
    launch = accelerate_argv(config_path, run_dir, num_processes=nodes * max(gpus_per_node, 1), num_machines=nodes,
                             machine_rank=0, main_process_ip="$MASTER_ADDR", main_process_port=29500,
                             fsdp=fsdp, deepspeed=deepspeed, cpu=gpus_per_node == 0, python=python or sys.executable,
                             resume=resume, max_bad_rows=max_bad_rows)
    launch[launch.index("--machine_rank") + 1] = "$SLURM_NODEID"
    launch[launch.index("--main_process_port") + 1] = "$MASTER_PORT"
    if run_manager:
        launch.append("--log-stderr")  # rank 0 logs to the job's output, which is the run's train.log
    if requeue and not resume:
        launch.append(_RESUME_ON_RESTART)
    # inside the task: variables in double quotes (expanded there), everything else quoted literally
    inner = " ".join(f'"{a}"' if a in _TASK_VARS else a if a == _RESUME_ON_RESTART else shlex.quote(a)
                     for a in launch)
    output = (output or run_dir.replace("%", "%%") + "/slurm-%j.out")  # Slurm expands %u, %x... in --output
    lines = ["#!/bin/bash", f"#SBATCH --job-name={job_name}", f"#SBATCH --nodes={nodes}",
             "#SBATCH --ntasks-per-node=1"]
    if gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={gpus_per_node}")
    if time_limit:
        lines.append(f"#SBATCH --time={time_limit}")
    if time_limit and signal_before_s:
        lines.append(f"#SBATCH --signal=TERM@{int(signal_before_s)}")  # to every task: checkpoint, then stop
    lines.append(f'#SBATCH --output="{output}"' if " " in output else f"#SBATCH --output={output}")
    if run_manager:
        lines.append("#SBATCH --open-mode=append")  # a resumed or requeued job adds to the same log
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    if account:
        lines.append(f"#SBATCH --account={account}")
    lines.append("#SBATCH --requeue" if requeue else "#SBATCH --no-requeue")
    lines += ["set -euo pipefail",
              "# rank 0's address: the first node's NodeAddr (its name where Slurm records no address)",
              "FIRST_NODE=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | sed -n 1p)",
              "NODE_ADDR=$(scontrol show node -o \"$FIRST_NODE\" 2>/dev/null | sed -n 's/.* NodeAddr=\\([^ ]*\\).*/\\1/p' "
              "| sed -n 1p || true)",
              "export MASTER_ADDR=${NODE_ADDR:-$FIRST_NODE}",
              "export MASTER_PORT=$((20000 + ${SLURM_JOB_ID:-0} % 20000))  # one port per job",
              f"mkdir -p {shlex.quote(run_dir)}",
              f"cd {shlex.quote(run_dir)}",
              "export PYTHONUNBUFFERED=1"]
    if requeue and not resume:
        lines += ["# a requeued (preempted) job continues from its checkpoint",
                  'if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then export PREFPILOT_RESUME=1; fi']
    lines += ['echo "prefpilot: job ${SLURM_JOB_ID:-?} on $SLURM_JOB_NODELIST, rank 0 at $MASTER_ADDR:$MASTER_PORT, '
              'restart ${SLURM_RESTART_COUNT:-0}"',
              f"# one accelerate launcher per node; each starts {max(gpus_per_node, 1)} process(es)",
              f"srun bash -c {shlex.quote(inner)}", ""]
    return "\n".join(lines)


_TASK_VARS = ("$SLURM_NODEID", "$MASTER_ADDR", "$MASTER_PORT")
_RESUME_ON_RESTART = "${PREFPILOT_RESUME:+--resume}"  # expands to --resume, or to no word at all
