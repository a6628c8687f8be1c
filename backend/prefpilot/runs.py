"""The run manager: detached training processes under one runs root.

Light (no torch): training runs in its own process (``python -m prefpilot.train.entry``),
started in a new session so it outlives the caller (the CLI or the MCP server).
Everything about a run lives in its directory ``<root>/<run_id>/`` (see rundir.py);
the manager writes nowhere else, and reading a run's state needs nothing but that
directory, so status is right after the caller restarts.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from . import rundir
from .config.policy import split_secrets
from .errors import PrefpilotError

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # names we generate, and `train --run-dir` folder names
LOCK_TIMEOUT_S = 30.0
ACTIVE = ("queued", "running")


def runs_root(root: str | Path | None = None) -> Path:
    return Path(root or os.environ.get("PREFPILOT_RUNS") or "runs").resolve()


def check_run_id(run_id) -> str:
    """Run ids are file names we generate; anything else (paths, dots, spaces) is refused."""
    if not isinstance(run_id, str) or not RUN_ID.match(run_id) or ".." in run_id:
        raise PrefpilotError(f"run id {str(run_id)[:80]!r} is not valid: run ids look like "
                             "'20261122-101500-dpo-smollm2-135m-instruct-a1b2c3' (see `prefpilot runs list`)",
                             code="bad_run_id")
    return run_id


RUN_FILES = ("status.json", "train.log", "metrics.jsonl", "config.yaml", "slurm.json", "job.sbatch")


def run_path(run_id: str, root: str | Path | None = None, *, must_exist: bool = True) -> Path:
    d = runs_root(root) / check_run_id(run_id)
    if must_exist and not (d / "status.json").is_file():
        raise PrefpilotError(f"no run {run_id!r} under {runs_root(root)} (see `prefpilot runs list`)",
                             code="unknown_run")
    # a run folder, or one of its files, that is a link would make every reader follow it out of the root
    for p in (d, *(d / f for f in RUN_FILES)):
        if p.is_symlink():
            raise PrefpilotError(f"{p} is a symbolic link; run folders and their files must be real files "
                                 "(refused)", code="symlinked_run")
    return d


def new_run_id(config: dict) -> str:
    model = str(config.get("model_name_or_path", "model")).rstrip("/").split("/")[-1].lower()
    model = re.sub(r"[^a-z0-9]+", "-", model).strip("-")[:32] or "model"
    method = config.get("method", "dpo") if config.get("method") in ("dpo", "simpo", "orpo", "kto", "cpo") else "dpo"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{method}-{model}-{secrets.token_hex(8)}"  # 64 random bits


# ----------------------------------------------------------------------------- processes
def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in clock ticks) from /proc, or None where there is no /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], fields[19]


PID_MAX = 2**31 - 1  # pid_t is a C int: os.kill on 2**63 (say, planted in status.json) overflows instead of failing


def valid_pid(pid) -> bool:
    """A number that can be a process id at all: an int (not a bool) from 1 to pid_t's maximum."""
    return isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid <= PID_MAX


def pid_alive(pid, started: str | None = None) -> bool:
    """Is this the process we started? Zombies and a reused pid count as dead."""
    if not valid_pid(pid):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else: then it cannot be ours unless the start time matches
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, start = stat
    return state not in ("Z", "X") and (started is None or start == started)


def _cmdline(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None


def is_our_trainer(st: dict, run_dir: Path) -> bool:
    """Is status.json's pid this run's training process? Its start time must match the recorded one and
    (where /proc shows it) its command line must be prefpilot's trainer for this run dir: a pid planted in
    status.json, or reused by another program, is never signalled."""
    pid, started = st.get("pid"), st.get("pid_started")
    if not valid_pid(pid):
        return False
    stat = _proc_stat(pid)
    if stat is not None and not started:
        return False  # cannot tell it from any other process
    if not pid_alive(pid, started):
        return False
    cmd = _cmdline(pid)
    return cmd is None or ("prefpilot.train.entry" in cmd and str(run_dir) in cmd)


def _spawn(run_dir: Path, args: list[str], secrets: dict | None = None) -> dict:
    """Start ``python -m prefpilot.train.entry`` detached; its stdout/stderr go to train.log.

    ``secrets`` (say HF_TOKEN) travel in the trainer's environment, never in the run folder."""
    argv = [sys.executable, "-m", "prefpilot.train.entry", str(run_dir / "config.yaml"), "--run-dir", str(run_dir),
            "--log-stderr", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(secrets or {})}
    with open(run_dir / "train.log", "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=run_dir, env=env, start_new_session=True)  # own session: survives the caller
    # Reap it when it exits so a long-lived caller (the MCP server) does not keep a zombie.
    threading.Thread(target=proc.wait, daemon=True).start()
    stat = _proc_stat(proc.pid)
    return {"pid": proc.pid, "pid_started": stat[1] if stat else None}


def _absolutise_paths(config: dict, base: Path) -> dict:
    """The trainer runs in the run dir: make local dataset/model paths absolute first, relative to ``base``
    (the caller's folder for the CLI, the workspace for the MCP server: never the server's own cwd)."""
    cfg = dict(config)
    for key in ("dataset_path", "model_name_or_path", "dataset_name"):
        v = cfg.get(key)
        if isinstance(v, str) and v and not v.startswith("builtin:"):
            p = Path(v).expanduser()
            p = p if p.is_absolute() else base / p
            if p.exists():
                cfg[key] = str(p.resolve())
    return cfg


# ----------------------------------------------------------------------------- the API
def launch(config: dict, runs_root_dir: str | Path | None = None, *, max_bad_rows: int = 0,
           base: str | Path | None = None, max_active: int | None = None, launch_options: dict | None = None) -> str:
    """Validate, create the run dir, start training detached; returns the run id at once.

    Relative paths in ``config`` are read against ``base`` (default: the current folder). ``max_active``
    refuses the launch when that many runs are already queued or running under the root (Slurm jobs pending or
    running included). Where it trains: the config's ``launch:`` block with ``launch_options`` (the CLI's
    --backend/--nodes/...) on top; backend slurm submits a batch job (slurm.py) instead of a local process."""
    from .config.validate import validate
    from . import slurm
    opts = slurm.launch_options(config.get("launch"), launch_options, base=Path(base or ".").resolve())
    config = _absolutise_paths(config, Path(base or ".").resolve())
    # locally it trains here, so memory must fit this machine; on Slurm it is checked on the node
    report = validate(config, local=opts["backend"] == "local")
    if not report["valid"]:
        msg = "; ".join(f"{e['path'] or '/'}: {e['message']}" for e in report["errors"])
        raise PrefpilotError(f"invalid config, nothing was started: {msg}", code="invalid_config", details=report)
    root = runs_root(runs_root_dir)
    root.mkdir(parents=True, exist_ok=True)
    with _capacity(root, max_active):
        for _ in range(10):
            run_id = new_run_id(report["normalized"])
            d = root / run_id
            try:
                d.mkdir()  # never share a directory: a collision just draws a new id
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 10 collisions of 24 random bits in the same second
            raise PrefpilotError(f"could not create a new run dir under {root}", code="run_dir_collision")
        cfg, secrets = split_secrets(config)  # a token goes to the trainer's environment, not into config.yaml
        if "launch" in cfg or opts["backend"] != "local":
            cfg["launch"] = opts  # what this run was started with (flags included, files made absolute)
        with rundir.run_lock(d):
            (d / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
            rundir.update_status(d, run_id=run_id, state="queued", method=report["method"], created_at=rundir.now())
            if opts["backend"] == "slurm":
                _submit(d, opts, cfg, secrets=secrets, max_bad_rows=int(max_bad_rows))
            else:
                args = ["--max-bad-rows", str(int(max_bad_rows))] if max_bad_rows else []
                _start(d, args, secrets)
    return run_id


def _submit(d: Path, opts: dict, cfg: dict, *, resume: bool = False, secrets: dict | None = None,
            max_bad_rows: int = 0, lease_used_s: float = 0.0) -> None:
    """sbatch the run; a refused submission ends the run 'failed' with Slurm's reason, never 'queued' forever."""
    from . import slurm
    try:
        slurm.submit(d, opts, cfg, resume=resume, secrets=secrets, max_bad_rows=max_bad_rows,
                     lease_used_s=lease_used_s)
    except PrefpilotError as exc:
        rundir.update_status(d, state="failed", finished_at=rundir.now(), backend="slurm", error=str(exc))
        raise


@contextlib.contextmanager
def _capacity(root: Path, max_active: int | None):
    """Hold the root's launch lock while counting active runs and starting one: four parallel launches with a
    limit of one start one trainer, not four (the count alone was check-then-act)."""
    if not max_active:
        yield
        return
    with rundir.run_lock(root, name=".launch.lock", busy="another launch under this runs root"):
        active = active_runs(root)
        if len(active) >= max_active:
            raise PrefpilotError(f"{len(active)} run(s) already active ({', '.join(active)}); at most {max_active} "
                                 "at a time here (--max-concurrent-runs). Wait for one (wait_run) or cancel one "
                                 "first", code="too_many_runs")
        yield


def _start(d: Path, args: list[str], secrets: dict | None = None) -> None:
    """Spawn the trainer; a spawn that fails ends the run 'failed' with the reason, never 'queued' forever."""
    try:
        rundir.update_status(d, **_spawn(d, args, secrets))
    except OSError as exc:
        rundir.update_status(d, state="failed", finished_at=rundir.now(),
                             error=f"could not start the training process: {exc.strerror or exc}")
        raise PrefpilotError(f"could not start the training process for {d.name}: {exc.strerror or exc}",
                             code="spawn_failed") from None


def status(run_id: str, root: str | Path | None = None, *, settle: bool = True) -> dict:
    """State, progress, ETA, last metrics and error; a dead process left 'running' becomes failed.

    ``settle`` waits 50 ms for a process that is exiting right now to write its final state (a listing
    of thousands of stale runs skips the wait)."""
    from . import slurm
    d = run_path(run_id, root)
    st = rundir.read_status(d)
    sched = None
    if slurm.is_slurm(d):  # the scheduler, not a local pid, says whether the job lives
        st, sched = slurm.reconcile(d, st, settle=settle)
    # No pid yet = launch() is between creating the dir and starting the process.
    elif st.get("state") in ACTIVE and st.get("pid") is not None and not is_our_trainer(st, d):
        if settle:
            time.sleep(0.05)
        st = rundir.read_status(d)  # it may have written its final state as it exited
        if st.get("state") in ACTIVE:
            tail = rundir.tail_lines(d / "train.log", 20)
            st = rundir.update_status(
                d, state="failed", finished_at=rundir.now(), log_tail=tail,
                error=f"the training process (pid {st.get('pid')}) ended without writing a final state "
                      "(killed, out of memory, or crashed); see log_tail / `prefpilot runs logs`")
    if st.get("state") not in rundir.STATES:  # hand-edited or corrupt: say so, never break a listing
        st = {**st, "state": "unknown", "error": "status.json is unreadable or not a JSON object with a known "
                                                 "state: repair it, or move this run folder away"}
    out = {"run_id": run_id, "run_dir": str(d), "alive": st.get("state") in ACTIVE, **st,
           "last_metrics": rundir.last_metrics(d)}
    if slurm.is_slurm(d):
        out.update(backend="slurm", job_id=slurm.job_id(d))
        if sched is not None:
            out["scheduler"] = sched
    else:
        out.setdefault("backend", "local")
    if out.get("state") in ("failed", "cancelled"):
        ck = rundir.last_checkpoint(d)
        out["checkpoint"] = str(ck) if ck else None
        out.setdefault("log_tail", rundir.tail_lines(d / "train.log", 20))
    return out


def list_runs(root: str | Path | None = None) -> list[dict]:
    """Every run under the root, newest first, with its state and progress."""
    base = runs_root(root)
    out = []
    if base.is_dir():
        for d in base.iterdir():
            if RUN_ID.match(d.name) and (d / "status.json").is_file():
                s = status(d.name, base, settle=False)
                row = {k: s.get(k) for k in ("run_id", "state", "method", "step", "total_steps", "percent",
                                             "created_at", "error", "backend")}
                if s.get("backend") == "slurm":
                    row["job_id"] = s.get("job_id")
                    row["scheduler_state"] = (s.get("scheduler") or {}).get("state")
                out.append(row)
    return sorted(out, key=lambda r: r.get("created_at") or "", reverse=True)


def cancel(run_id: str, root: str | Path | None = None, *, grace: float = 60.0, wait: bool = True) -> dict:
    """SIGTERM (the trainer checkpoints and stops after the current step), then SIGKILL after ``grace`` s.

    A Slurm run gets the same through the scheduler: SIGTERM to the job's tasks, ``scancel`` after ``grace``
    (a job still pending is simply removed). ``wait=False`` returns as soon as the signal is sent (state
    ``cancelling``; MCP clients time out long before a grace period ends) and finishes the job in a background
    thread of this process."""
    from . import slurm
    d = run_path(run_id, root)
    with rundir.run_lock(d):  # one launch/resume/cancel at a time per run
        st = status(run_id, root)
        if st["state"] not in ACTIVE:
            return {**st, "note": f"nothing to cancel: the run is {st['state']}"}
        if st.get("cancel_requested_at"):
            # a second SIGTERM would turn the trainer's checkpoint-and-stop into an immediate stop
            return {**st, "note": f"a cancel was already requested at {st['cancel_requested_at']}"}
        on_slurm = st.get("backend") == "slurm" and st.get("job_id")
        if not on_slurm:
            if st.get("pid") is None:  # queued, never spawned (the launcher died): nothing runs
                rundir.update_status(d, state="cancelled", finished_at=rundir.now(),
                                     error="cancelled before it started")
                return status(run_id, root)
            if not is_our_trainer(st, d):
                return {**status(run_id, root), "note": "the process recorded in status.json is not this run's "
                                                        "trainer: nothing was signalled"}
        rundir.update_status(d, cancel_requested_at=rundir.now())
    if on_slurm:
        note = slurm.cancel(d, st["job_id"], st.get("scheduler"), grace, wait)
        out = status(run_id, root)
        return {**out, "state": "cancelling" if out["state"] in ACTIVE else out["state"], "note": note}
    pid, started = st.get("pid"), st.get("pid_started")
    _signal_group(pid, signal.SIGTERM)
    if not wait:
        threading.Thread(target=_finish_cancel, args=(d, pid, started, grace), daemon=True).start()
        return {**status(run_id, root), "state": "cancelling",
                "note": f"SIGTERM sent: the trainer saves a checkpoint after the current step and stops (killed "
                        f"after {grace:g} s if not); follow it with run_status or wait_run"}
    _finish_cancel(d, pid, started, grace)
    return status(run_id, root)


def _signal_group(pid: int, sig) -> None:
    if not valid_pid(pid):  # never reached with a planted pid (is_our_trainer refuses it first); kept as a floor
        return
    try:
        os.killpg(pid, sig)  # the trainer leads its own session; its children die with it
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _finish_cancel(d: Path, pid: int, started, grace: float) -> None:
    """Wait up to ``grace`` s for the trainer to checkpoint and exit; kill it after that; record the end."""
    deadline = time.time() + grace
    while time.time() < deadline and pid_alive(pid, started):
        time.sleep(0.2)
    killed = pid_alive(pid, started)
    if killed:
        _signal_group(pid, signal.SIGKILL)
        end = time.time() + 10
        while time.time() < end and pid_alive(pid, started):
            time.sleep(0.1)
    if rundir.read_status(d).get("state") in ACTIVE:
        rundir.update_status(d, state="cancelled", finished_at=rundir.now(),
                             error="cancelled by request" + (" (killed after the grace period)" if killed else ""))


def active_runs(root: str | Path | None = None) -> list[str]:
    """Run ids that are queued or running now (their process checked)."""
    return [r["run_id"] for r in list_runs(root) if r["state"] in ACTIVE]


def resume(run_id: str, root: str | Path | None = None, *, max_active: int | None = None,
           max_wall_time: float | None = None, lease_ceiling: float | None = None) -> dict:
    """Restart a failed or cancelled run from its last complete checkpoint (or from the start if none).

    The run's lease (``max_wall_time``) covers all its training, resumes included: ``max_wall_time`` sets a new
    total (the CLI's --max-wall-time), ``lease_ceiling`` caps it (an MCP server's --max-wall-time: an agent's
    resume never grants more time than the operator allows)."""
    d = run_path(run_id, root)
    with _capacity(runs_root(root), max_active), rundir.run_lock(d):  # six parallel resumes start one trainer
        st = status(run_id, root)
        if st["state"] in ACTIVE:
            raise PrefpilotError(f"run {run_id} is still {st['state']}: cancel it first", code="run_active")
        if st["state"] == "completed":
            raise PrefpilotError(f"run {run_id} already completed; launch a new run to train further",
                                 code="run_completed")
        _renew_lease(d, st, max_wall_time, lease_ceiling)
        ck = rundir.last_checkpoint(d)
        rundir.update_status(d, state="queued", error=None, log_tail=None, finished_at=None,
                             resumed_at=rundir.now(), resumed_from=str(ck) if ck else None,
                             cancel_requested_at=None, pid=None, pid_started=None)
        from . import slurm
        if slurm.is_slurm(d):  # a new job, same run dir: it continues from the checkpoint
            cfg = yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8")) or {}
            used = st.get("lease_used_s") if isinstance(st.get("lease_used_s"), (int, float)) else 0.0
            _submit(d, slurm.read(d).get("options") or {"backend": "slurm"}, cfg, resume=True, lease_used_s=used)
        else:
            _start(d, ["--resume"])
    return status(run_id, root)


def _renew_lease(d: Path, st: dict, max_wall_time: float | None, ceiling: float | None) -> None:
    """Refuse a resume whose lease is spent; write the new total lease into config.yaml when it changes."""
    try:
        cfg = yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise PrefpilotError(f"{d / 'config.yaml'} cannot be read ({exc}); the run cannot be resumed",
                             code="bad_run_config") from None
    if not isinstance(cfg, dict):
        raise PrefpilotError(f"{d / 'config.yaml'} is not a mapping; the run cannot be resumed", code="bad_run_config")
    old = cfg.get("max_wall_time")
    lease = max_wall_time if max_wall_time is not None else old
    if ceiling is not None:
        lease = ceiling if not isinstance(lease, (int, float)) else min(lease, ceiling)
    used = st.get("lease_used_s") if isinstance(st.get("lease_used_s"), (int, float)) else 0.0
    if isinstance(lease, (int, float)) and used >= lease:
        how = ("this server's --max-wall-time is a ceiling for the whole run; a person can continue it with "
               f"`prefpilot runs resume {d.name} --max-wall-time S`" if ceiling is not None and max_wall_time is None
               else "pass --max-wall-time S (the run's new total, in seconds) to continue it")
        raise PrefpilotError(f"run {d.name} has trained {used:g} s of its {lease:g} s lease (max_wall_time): {how}",
                             code="lease_spent")
    if lease != old:
        cfg["max_wall_time"] = lease
        rundir.write_text_atomic(d / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))


def logs(run_id: str, root: str | Path | None = None, tail: int = 50) -> str:
    d = run_path(run_id, root)
    if not isinstance(tail, int) or not 1 <= tail <= 10000:
        raise PrefpilotError("tail must be a whole number from 1 to 10000", code="bad_tail")
    return "\n".join(rundir.tail_lines(d / "train.log", tail))
