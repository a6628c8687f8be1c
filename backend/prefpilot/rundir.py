"""The run directory's files: one place that knows their names and how to write them safely.

Light (no torch): the run manager, the diagnosis and the MCP server read these too.
  config.yaml     normalised run config
  status.json     state, step/total, percent, ETA, times, error (atomic rewrite)
  metrics.jsonl   one JSON object per logging step, flushed as written
  train.log       the training process's log
  checkpoints/    Trainer checkpoints;  final/  the final model or adapter
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import stat
import re
import time
import uuid
from pathlib import Path

STATES = ("queued", "running", "completed", "failed", "cancelled")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def write_text_atomic(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, default=str))


def open_regular(path: Path, mode: str = "rb"):
    """Open a run file for reading only if it is a regular file: a FIFO planted as status.json or train.log
    must not block a status call (O_NONBLOCK makes the open itself return), and a device is refused."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"}))
    except BaseException:
        os.close(fd)
        raise


STATUS_MAX_BYTES = 4 << 20


def read_status(run_dir: Path) -> dict:
    """status.json as a dict; {} when it is missing, being replaced, unreadable or not a JSON object."""
    try:
        with open_regular(Path(run_dir) / "status.json") as fh:
            st = json.loads(fh.read(STATUS_MAX_BYTES))
    except (OSError, ValueError, RecursionError):
        return {}
    return st if isinstance(st, dict) else {}  # a list or number written by hand must not break every listing


def update_status(run_dir: Path, **fields) -> dict:
    status = read_status(run_dir)
    status.update(fields, updated_at=now())
    write_json_atomic(Path(run_dir) / "status.json", status)
    return status


@contextlib.contextmanager
def run_lock(run_dir: Path, timeout: float = 30.0, name: str = ".lock",
             busy: str = "another launch, resume or cancel of this run"):
    """Make launch/resume/cancel of one run exclusive (flock on <run dir>/.lock; freed if the holder dies).

    With ``name=".launch.lock"`` on the runs root it makes "count the active runs, then start one" atomic
    across threads and processes (the concurrency limit)."""
    import fcntl
    fh = open(Path(run_dir) / name, "a+")
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    from .errors import PrefpilotError
                    raise PrefpilotError(f"{run_dir}: {busy} has been busy for {timeout:g} s; try again",
                                         code="run_busy") from None
                time.sleep(0.05)
        yield
    finally:
        fh.close()


def clean_number(v):
    """JSON has no NaN/inf: keep them readable as strings so a follower sees them."""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def append_metrics(run_dir: Path, row: dict) -> None:
    with open(Path(run_dir) / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({k: clean_number(v) for k, v in row.items()}) + "\n")
        fh.flush()


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    try:
        with open_regular(path) as fh:
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return rows
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line being written right now
        if isinstance(row, dict):
            rows.append(row)
    return rows


def truncate_metrics(run_dir: Path, last_step: int) -> int:
    """Keep rows up to a checkpoint's step (so a resumed run's metrics are continuous); returns rows dropped."""
    rows = read_metrics(run_dir)
    keep = [r for r in rows if int(r.get("step", 0)) <= last_step]
    path = Path(run_dir) / "metrics.jsonl"
    tmp = path.with_name(".metrics.jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
    os.replace(tmp, path)
    return len(rows) - len(keep)


_CHECKPOINT = re.compile(r"checkpoint-([0-9]{1,18})")  # ASCII digits: "checkpoint-²" passes str.isdigit(), not int()


def checkpoint_step(path: Path) -> int | None:
    """The step of a Trainer checkpoint folder (checkpoint-500 -> 500); None for any other name."""
    m = _CHECKPOINT.fullmatch(Path(path).name)
    return int(m.group(1)) if m else None


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest *complete* checkpoint: a kill while saving leaves one without trainer_state.json (written last)."""
    cks = sorted((p for p in (Path(run_dir) / "checkpoints").glob("checkpoint-*") if checkpoint_step(p) is not None),
                 key=checkpoint_step)
    complete = [p for p in cks if (p / "trainer_state.json").is_file()]
    return complete[-1] if complete else None


def tail_lines(path: Path, n: int, max_bytes: int = 1 << 20) -> list[str]:
    """The last ``n`` lines of a text file without reading all of a long log."""
    try:
        with open_regular(path) as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-n:] if n > 0 else []


def last_metrics(run_dir: Path) -> dict | None:
    """The newest complete row of metrics.jsonl."""
    for line in reversed(tail_lines(Path(run_dir) / "metrics.jsonl", 5, max_bytes=64 * 1024)):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            return row
    return None
