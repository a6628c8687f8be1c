"""An evaluation as a detached process, for callers that must not load torch or block (the MCP server).

The job runs ``python -m prefpilot.evaluation.background RUN_DIR OPTIONS_JSON``, which calls the same
``evaluation.run.evaluate`` the CLI calls and records its progress in ``<run>/eval/status.json``:
  {"state": "running" | "completed" | "failed", "done": k, "total": n, "phase": "...", "options": {...},
   "pid": ..., "pid_started": ..., "error": ...}
One evaluation at a time per run (a lock around the check and the start); a second call while one runs
follows it instead of starting another.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from .. import rundir

STATUS = "status.json"


def _status_path(run_dir: Path) -> Path:
    return Path(run_dir) / "eval" / STATUS


def read(run_dir) -> dict:
    """The job's status; a job whose process died without a final state is reported failed."""
    from ..runs import pid_alive
    d = Path(run_dir) / "eval"
    st = rundir.read_status(d)
    if st.get("state") == "running" and st.get("pid") and not pid_alive(st["pid"], st.get("pid_started")):
        st = rundir.read_status(d)  # it may have finished as we looked
        if st.get("state") == "running":
            st = rundir.update_status(d, state="failed", error="the evaluation process ended without a final state "
                                                              "(killed or out of memory): see eval/eval.log")
    return st


def start(run_dir, options: dict) -> dict:
    """Start an evaluation unless one is running; returns the job's status."""
    run_dir = Path(run_dir)
    d = run_dir / "eval"
    d.mkdir(exist_ok=True)
    with rundir.run_lock(d, busy="another start of an evaluation of this run"):
        st = read(run_dir)
        if st.get("state") == "running":
            return {**st, "note": "an evaluation of this run is already running: following it"}
        rundir.write_json_atomic(d / STATUS, {"state": "running", "done": 0, "total": None, "phase": "starting",
                                              "options": options, "started_at": rundir.now()})
        argv = [sys.executable, "-m", "prefpilot.evaluation.background", str(run_dir), json.dumps(options)]
        with open(d / "eval.log", "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=run_dir, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                    start_new_session=True)
        threading.Thread(target=proc.wait, daemon=True).start()  # reap it: no zombie in a long-lived server
        from ..runs import _proc_stat
        stat = _proc_stat(proc.pid)
        return rundir.update_status(d, pid=proc.pid, pid_started=stat[1] if stat else None)


def report_if_current(run_dir, options: dict) -> dict | None:
    """The finished report of an evaluation with these options, if nothing was trained since."""
    from .run import read_report, targets
    st = read(run_dir)
    rep = read_report(run_dir)
    if st.get("state") != "completed" or rep is None or st.get("options") != options:
        return None
    try:
        newest = max(p.stat().st_mtime for p in targets(Path(run_dir), options.get("checkpoints", "last")))
    except Exception:
        return None
    return rep if (Path(run_dir) / "eval" / "report.json").stat().st_mtime >= newest else None


def _main(argv: list[str]) -> int:
    run_dir, options = Path(argv[0]), json.loads(argv[1])
    d = run_dir / "eval"
    from ..errors import PrefpilotError
    from .run import evaluate

    def progress(done, total, phase):
        rundir.update_status(d, done=done, total=total, phase=phase)
    try:
        report = evaluate(run_dir, progress=progress, **options)
    except PrefpilotError as exc:
        rundir.update_status(d, state="failed", error=str(exc), finished_at=rundir.now())
        return 1
    except Exception as exc:  # recorded for the caller; the traceback stays in eval/eval.log
        import traceback
        traceback.print_exc()
        rundir.update_status(d, state="failed", error=f"{type(exc).__name__}: {exc}", finished_at=rundir.now())
        return 1
    rundir.update_status(d, state="completed", verdict=report["verdict"], finished_at=rundir.now())
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
