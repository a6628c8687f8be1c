"""Slurm as a backend of the run manager: submit, read the scheduler, cancel, resume. Light (no torch).

A Slurm run is a run directory like any other (status.json, metrics.jsonl, train.log, checkpoints/) plus:
  slurm.json     the launch options and every job submitted for the run (written by the manager only)
  job.sbatch     the batch script of the latest job (train/launch.py::slurm_script)
The job's output is the run's train.log (``--open-mode=append``: a resumed or requeued job adds to it), so
`prefpilot runs logs` reads the same file for local and Slurm runs. The trainer writes status.json as it does
locally; the scheduler's view (pending and why, running where, finished with which exit) is read with
``scontrol show job`` (``sacct`` once the controller has forgotten the job) and merged in by ``runs.status``.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import rundir
from .errors import PrefpilotError

SLURM_FILE = "slurm.json"
SCRIPT_FILE = "job.sbatch"
BACKENDS = ("local", "slurm")
LAUNCH_KEYS = ("backend", "nodes", "gpus_per_node", "partition", "time", "account", "requeue", "fsdp_config_file",
               "deepspeed_config_file")
SHARDING_KEYS = ("fsdp_config_file", "deepspeed_config_file")  # files: accelerate's FSDP config, DeepSpeed's JSON
WORD = re.compile(r"^[A-Za-z0-9._:+\-]{1,64}$")
TIME = re.compile(r"^(\d{1,6}|\d{1,6}:\d{1,2}|\d{1,6}:\d{1,2}:\d{1,2}|\d{1,4}-\d{1,2}(:\d{1,2}){0,2})$")
MAX_NODES = 4096
MAX_GPUS_PER_NODE = 64
START_MARGIN_S = 600  # --time from max_wall_time: the lease plus start-up (model load) and the final save
SIGNAL_BEFORE_S = 120  # SIGTERM this long before the time limit: the trainer checkpoints and stops
CMD_TIMEOUT_S = 30  # sbatch, scancel
QUERY_TIMEOUT_S = 10  # scontrol/sacct for a status: a controller that does not answer must not stall a listing

# Slurm job states (squeue/scontrol/sacct long names) -> what the run manager calls them
PENDING = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
RUNNING = {"RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING", "STAGE_OUT"}
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "REVOKED"}


# ----------------------------------------------------------------------------- options
def launch_options(block, overrides: dict | None = None, base: str | Path | None = None) -> dict:
    """The run's ``launch:`` block with the caller's overrides (CLI flags) on top, checked: a backend, and for
    Slurm node/GPU counts and plain words for partition/account/time (they go into #SBATCH lines). An FSDP or
    DeepSpeed config file is made absolute against ``base`` (the nodes start elsewhere) and must exist."""
    opts = dict(block) if isinstance(block, dict) else {}
    if block is not None and not isinstance(block, dict):
        raise PrefpilotError("launch: must be a mapping such as {backend: slurm, nodes: 2}", code="bad_launch")
    opts.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(opts) - set(LAUNCH_KEYS))
    if unknown:
        raise PrefpilotError(f"launch: unknown option(s) {', '.join(unknown)}; known: {', '.join(LAUNCH_KEYS)}",
                             code="bad_launch")
    opts.setdefault("backend", "local")
    if opts["backend"] not in BACKENDS:
        raise PrefpilotError(f"launch.backend {opts['backend']!r}: use local or slurm", code="bad_launch")
    if opts["backend"] == "local":
        extra = sorted(k for k in opts if k != "backend")
        if extra:
            raise PrefpilotError(f"launch: {', '.join(extra)} only apply to backend slurm", code="bad_launch")
        return opts
    for key, lo, hi in (("nodes", 1, MAX_NODES), ("gpus_per_node", 0, MAX_GPUS_PER_NODE)):
        v = opts.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi):
            raise PrefpilotError(f"launch.{key} must be a whole number from {lo} to {hi}", code="bad_launch")
    for key in ("partition", "account"):
        v = opts.get(key)
        if v is not None and not (isinstance(v, str) and WORD.match(v)):
            raise PrefpilotError(f"launch.{key} {str(v)[:80]!r}: use letters, digits and . _ : + - only",
                                 code="bad_launch")
    t = opts.get("time")
    if t is not None and not (isinstance(t, str) and TIME.match(t)):
        raise PrefpilotError(f"launch.time {str(t)[:80]!r}: use a Slurm time limit: minutes, HH:MM:SS or "
                             "D-HH:MM:SS", code="bad_launch")
    if not isinstance(opts.get("requeue", True), bool):
        raise PrefpilotError("launch.requeue must be true or false", code="bad_launch")
    files = [k for k in SHARDING_KEYS if opts.get(k) is not None]
    if len(files) > 1:
        raise PrefpilotError("launch: fsdp_config_file or deepspeed_config_file, not both", code="bad_launch")
    for key in files:
        v = opts[key]
        if not isinstance(v, str) or not v or any(c in v for c in "\n\r\0"):
            raise PrefpilotError(f"launch.{key} must be a file path", code="bad_launch")
        path = Path(v).expanduser()
        path = (path if path.is_absolute() else Path(base or ".") / path).resolve()
        if not path.is_file():
            raise PrefpilotError(f"launch.{key} {v!r}: no such file", code="bad_launch")
        opts[key] = str(path)
    opts.setdefault("nodes", 1)
    opts.setdefault("gpus_per_node", 0 if shutil.which("nvidia-smi") is None else 1)
    opts.setdefault("requeue", True)
    return opts


def time_limit(opts: dict, config: dict, lease_used_s: float = 0.0) -> str | None:
    """``launch.time`` as given, else from max_wall_time: the lease left plus START_MARGIN_S, in minutes."""
    if opts.get("time"):
        return opts["time"]
    lease = config.get("max_wall_time")
    if isinstance(lease, (int, float)) and not isinstance(lease, bool) and lease > 0:
        left = max(float(lease) - float(lease_used_s or 0), 0.0)
        return str(max(1, math.ceil((left + START_MARGIN_S) / 60)))
    return None


def signal_lead(limit: str | None) -> int | None:
    """Seconds before the time limit at which every task gets SIGTERM (at most a fifth of the limit)."""
    if not limit:
        return None
    return max(30, min(SIGNAL_BEFORE_S, time_seconds(limit) // 5))


def time_seconds(limit: str) -> int:
    """A Slurm time limit in seconds (minutes | M:S | H:M:S | D-H | D-H:M | D-H:M:S)."""
    days = 0
    if "-" in limit:
        d, limit = limit.split("-", 1)
        days = int(d)
        parts = [int(p) for p in limit.split(":")] + [0] * (3 - len(limit.split(":")))
        return days * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
    parts = [int(p) for p in limit.split(":")]
    if len(parts) == 1:
        return parts[0] * 60
    if len(parts) == 2:
        return parts[0] * 60 + parts[1]
    return parts[0] * 3600 + parts[1] * 60 + parts[2]


# ----------------------------------------------------------------------------- the run dir
def is_slurm(run_dir: Path) -> bool:
    p = Path(run_dir) / SLURM_FILE
    return p.is_file() and not p.is_symlink()


def read(run_dir: Path) -> dict:
    try:
        with rundir.open_regular(Path(run_dir) / SLURM_FILE) as fh:
            data = json.loads(fh.read(1 << 20))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def job_id(run_dir: Path) -> str | None:
    jid = read(run_dir).get("job_id")
    return jid if isinstance(jid, str) and jid.isdigit() else None


# ----------------------------------------------------------------------------- commands
def _slurm(argv: list[str], check: bool = True, timeout: float = CMD_TIMEOUT_S) -> subprocess.CompletedProcess:
    exe = shutil.which(argv[0])
    if exe is None:
        raise PrefpilotError(f"{argv[0]} not found: Slurm's client commands must be on PATH (on a login node of "
                             "the cluster, or `apt-get install slurm-client`)", code="slurm_unavailable")
    try:
        r = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise PrefpilotError(f"{argv[0]} did not answer in {timeout:g} s (is slurmctld up? is SLURM_CONF right?)",
                             code="slurm_unavailable") from None
    if check and r.returncode != 0:
        raise PrefpilotError(f"{' '.join(argv[:2])} failed: {(r.stderr or r.stdout).strip()[-500:]}",
                             code="slurm_error")
    return r


def submit(run_dir: Path, opts: dict, config: dict, *, resume: bool = False, secrets: dict | None = None,
           lease_used_s: float = 0.0, max_bad_rows: int = 0) -> str:
    """Write job.sbatch and sbatch it; record the job in slurm.json (and status.json). Returns the job id.

    ``secrets`` (HF_TOKEN) reach the job through sbatch's environment (--export=ALL), never the script."""
    from .train.launch import slurm_script
    d = Path(run_dir)
    limit = time_limit(opts, config, lease_used_s)
    script = slurm_script(str(d / "config.yaml"), str(d), nodes=opts.get("nodes", 1),
                          gpus_per_node=opts.get("gpus_per_node", 0), job_name=f"prefpilot-{d.name}"[:64],
                          time_limit=limit, partition=opts.get("partition"), account=opts.get("account"),
                          python=sys.executable, output=str(d).replace("%", "%%") + "/train.log", resume=resume,
                          signal_before_s=signal_lead(limit), requeue=bool(opts.get("requeue", True)),
                          fsdp=opts.get("fsdp_config_file"), deepspeed=opts.get("deepspeed_config_file"),
                          run_manager=True, max_bad_rows=max_bad_rows)
    rundir.write_text_atomic(d / SCRIPT_FILE, script)
    data = read(d)
    jobs = [j for j in data.get("jobs", []) if isinstance(j, dict)]
    # the options first: a run whose submission fails is still a Slurm run (a resume submits it again); no job id
    # while sbatch runs, so a status read meanwhile does not judge a resumed run by its previous, finished job
    rundir.write_json_atomic(d / SLURM_FILE, {"backend": "slurm", "options": opts, "job_id": None, "jobs": jobs})
    env = {**os.environ, **(secrets or {})}
    exe = shutil.which("sbatch")
    if exe is None:
        raise PrefpilotError("sbatch not found: Slurm's client commands must be on PATH to launch with backend "
                             "slurm", code="slurm_unavailable")
    try:
        r = subprocess.run([exe, "--parsable", "--export=ALL", str(d / SCRIPT_FILE)], capture_output=True,
                           text=True, timeout=CMD_TIMEOUT_S, env=env, cwd=d, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise PrefpilotError(f"sbatch did not answer in {CMD_TIMEOUT_S} s", code="slurm_unavailable") from None
    if r.returncode != 0:
        raise PrefpilotError(f"sbatch refused the job: {(r.stderr or r.stdout).strip()[-500:]}", code="slurm_error")
    jid = r.stdout.strip().split(";")[0]  # --parsable: "id" or "id;cluster"
    if not jid.isdigit():
        raise PrefpilotError(f"sbatch answered {r.stdout.strip()[:200]!r}, not a job id", code="slurm_error")
    jobs.append({"job_id": jid, "submitted_at": rundir.now(), "resume": resume, "time": limit})
    rundir.write_json_atomic(d / SLURM_FILE, {"backend": "slurm", "options": opts, "job_id": jid, "jobs": jobs})
    rundir.update_status(d, backend="slurm", job_id=jid)
    return jid


def _fields(line: str) -> dict:
    """``scontrol show job -o`` output: Key=Value pairs separated by spaces (values have no spaces we need)."""
    out = {}
    for tok in line.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            out.setdefault(k, v)
    return out


def job_state(jid: str) -> dict:
    """The scheduler's view of one job: ``state`` pending | running | finished | gone | unreachable, with
    Slurm's own state, the reason it waits, its nodes and its exit code where known."""
    out = {"job_id": jid, "state": "unreachable", "slurm_state": None, "reason": None, "nodes": [],
           "exit_code": None}
    try:
        r = _slurm(["scontrol", "show", "job", "-o", jid], check=False, timeout=QUERY_TIMEOUT_S)
    except PrefpilotError as exc:
        return {**out, "error": str(exc)}
    f = _fields(r.stdout) if r.returncode == 0 else {}
    if not f.get("JobState"):
        if "Invalid job id" not in (r.stderr + r.stdout):
            return {**out, "error": (r.stderr or r.stdout).strip()[-300:] or "scontrol gave no answer"}
        f = _sacct(jid)  # the controller forgot it (MinJobAge): accounting may still know
        if not f:
            return {**out, "state": "gone"}
    raw = f["JobState"].split()[0].upper()
    state = ("pending" if raw in PENDING else "running" if raw in RUNNING else
             "finished" if raw in FINISHED or raw.startswith("CANCELLED") else "running")
    out.update(state=state, slurm_state=raw, exit_code=f.get("ExitCode"),
               reason=None if f.get("Reason") in (None, "None", "(null)") else f.get("Reason"))
    nodelist = f.get("NodeList")
    if nodelist and nodelist != "(null)" and state != "pending":
        out["nodes"] = hostnames(nodelist)
    if f.get("Restarts") not in (None, "0"):
        out["restarts"] = int(f["Restarts"]) if f["Restarts"].isdigit() else f["Restarts"]
    return out


def _sacct(jid: str) -> dict:
    try:
        r = _slurm(["sacct", "-n", "-X", "-P", "-j", jid, "-o", "State,ExitCode,NodeList,Reason"], check=False,
                   timeout=QUERY_TIMEOUT_S)
    except PrefpilotError:
        return {}
    line = r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else ""
    parts = line.split("|")
    if len(parts) < 4:
        return {}
    return {"JobState": parts[0], "ExitCode": parts[1], "NodeList": parts[2], "Reason": parts[3]}


def hostnames(nodelist: str) -> list[str]:
    try:
        r = _slurm(["scontrol", "show", "hostnames", nodelist], check=False, timeout=QUERY_TIMEOUT_S)
    except PrefpilotError:
        return [nodelist]
    return r.stdout.split() if r.returncode == 0 and r.stdout.strip() else [nodelist]


def active(sched: dict) -> bool:
    """Pending or running as far as the scheduler knows (unreachable counts: never end a run on a timeout)."""
    return sched.get("state") in ("pending", "running", "unreachable")


# ----------------------------------------------------------------------------- status
def reconcile(run_dir: Path, st: dict, *, settle: bool = True) -> tuple[dict, dict | None]:
    """status.json as the trainer left it, squared with the scheduler: (status, scheduler view or None).

    A job that ended without the trainer writing a final state fails the run (with Slurm's state and exit code);
    a run that Slurm stopped (time-limit signal, preemption) and then requeued reads queued/running again."""
    d = Path(run_dir)
    jid = job_id(d)
    if jid is None:
        return st, None
    state = st.get("state")
    stopped_by_slurm = state == "cancelled" and not st.get("cancel_requested_at")
    if state not in ("queued", "running") and not stopped_by_slurm:
        return st, None  # finished and settled: no scheduler call for every old run in a listing
    sched = job_state(jid)
    if state in ("queued", "running"):
        if sched["state"] in ("finished", "gone"):
            if settle:
                time.sleep(0.05)
            st = rundir.read_status(d)
            if st.get("state") in ("queued", "running"):
                tail = rundir.tail_lines(d / "train.log", 20)
                if st.get("cancel_requested_at"):
                    st = rundir.update_status(d, state="cancelled", finished_at=rundir.now(),
                                              error="cancelled by request (the job ended before the trainer "
                                                    "recorded it)")
                else:
                    how = (f"ended {sched['slurm_state']} (exit code {sched['exit_code']})"
                           if sched["state"] == "finished" else "is no longer known to Slurm")
                    st = rundir.update_status(
                        d, state="failed", finished_at=rundir.now(), log_tail=tail,
                        error=f"Slurm job {jid} {how} without the trainer writing a final state; see log_tail / "
                              "`prefpilot runs logs`")
    elif sched["state"] in ("pending", "running"):  # requeued after Slurm stopped it: it goes on by itself
        st = rundir.update_status(d, state="queued", error=None, finished_at=None, requeued_at=rundir.now())
    elif stopped_by_slurm and "Slurm" not in str(st.get("error")):
        st = rundir.update_status(
            d, error=f"stopped by Slurm (time limit or preemption; job {jid} {sched.get('slurm_state') or 'ended'})"
                     f" with a checkpoint: `prefpilot runs resume {d.name}` continues it")
    return st, sched


# ----------------------------------------------------------------------------- cancel
def cancel(run_dir: Path, jid: str, sched: dict | None, grace: float, wait: bool) -> str:
    """Ask the job to checkpoint (SIGTERM to every task: the trainer saves and stops after the current step),
    then ``scancel`` it once ``grace`` s have passed. A job still pending is removed at once. Returns a note."""
    d = Path(run_dir)
    if sched and sched.get("state") == "pending":
        _slurm(["scancel", jid], check=False)
        _wait_gone(jid, 30)
        rundir.update_status(d, state="cancelled", finished_at=rundir.now(),
                             error="cancelled before it started (the Slurm job was still pending)")
        return f"Slurm job {jid} was pending: removed from the queue"
    # every task of every step, not the batch shell; a job whose step has not started yet has no task to signal:
    # then the grace period runs out and scancel ends it
    _slurm(["scancel", "--signal=TERM", jid], check=False)
    if not wait:
        import threading
        threading.Thread(target=finish_cancel, args=(d, jid, grace), daemon=True).start()
        return (f"SIGTERM sent to Slurm job {jid}: the trainer saves a checkpoint after the current step and "
                f"stops (scancel after {grace:g} s if not); follow it with run_status or wait_run")
    finish_cancel(d, jid, grace)
    return f"Slurm job {jid} stopped"


def _wait_gone(jid: str, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not active(job_state(jid)):
            return True
        time.sleep(0.5)
    return False


def finish_cancel(d: Path, jid: str, grace: float) -> None:
    killed = not _wait_gone(jid, grace)
    if killed:
        _slurm(["scancel", jid], check=False)  # SIGTERM, then SIGKILL after the cluster's KillWait
        _wait_gone(jid, 120)
    if rundir.read_status(d).get("state") in ("queued", "running"):
        rundir.update_status(d, state="cancelled", finished_at=rundir.now(),
                             error="cancelled by request" + (" (scancelled after the grace period)" if killed else ""))
