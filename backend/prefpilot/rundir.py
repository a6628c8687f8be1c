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
import json
import math
import os
import re
import time
import uuid
from pathlib import Path

STATES = ("queued", "running", "completed", "failed", "cancelled")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1, default=str)
    os.replace(tmp, path)


def read_status(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def update_status(run_dir: Path, **fields) -> dict:
    status = read_status(run_dir)
    status.update(fields, updated_at=now())
    write_json_atomic(Path(run_dir) / "status.json", status)
    return status


@contextlib.contextmanager
def run_lock(run_dir: Path, timeout: float = 30.0):
    """Make launch/resume/cancel of one run exclusive (flock on <run dir>/.lock; freed if the holder dies)."""
    import fcntl
    fh = open(Path(run_dir) / ".lock", "a+")
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    from .errors import PrefpilotError
                    raise PrefpilotError(f"{run_dir}: another launch, resume or cancel of this run has been busy "
                                         f"for {timeout:g} s; try again", code="run_busy") from None
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
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line being written right now
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
        with open(path, "rb") as fh:
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
            return json.loads(line)
        except ValueError:
            continue
    return None
