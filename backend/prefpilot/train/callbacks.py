"""A TrainerCallback that writes metrics.jsonl and status.json as training goes, and stops on NaN/inf."""
from __future__ import annotations

import math
import time

from transformers import TrainerCallback

from .. import rundir

from .stop import STOP  # set by the SIGTERM handler (entry.py)

RUN_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected")


class RunRecorder(TrainerCallback):
    def __init__(self, run_dir, start_step: int = 0):
        self.run_dir = run_dir
        self.t0 = time.time()
        self.start_step = start_step
        self.last_tokens = None
        self.last_time = None
        self.nan_step = None
        self.last_status = 0.0

    def on_train_begin(self, args, state, control, **kw):
        if state.is_world_process_zero:
            rundir.update_status(self.run_dir, state="running", total_steps=state.max_steps, step=state.global_step)
        self.t0 = time.time()
        self.start_step = state.global_step
        STOP["in_loop"] = True

    def on_train_end(self, args, state, control, **kw):
        STOP["in_loop"] = False

    def on_log(self, args, state, control, logs=None, **kw):
        logs = dict(logs or {})
        if not state.is_world_process_zero:
            return
        if "train_runtime" in logs:  # the end-of-training summary, not a logging step
            rundir.update_status(self.run_dir, summary={k: rundir.clean_number(v) for k, v in logs.items()})
            return
        now = time.time()
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "wall_time": round(now - self.t0, 3)}
        row.update(logs)
        tokens = logs.get("num_tokens")
        if isinstance(tokens, (int, float)):
            if self.last_tokens is not None and now > self.last_time:
                row["tokens_per_second"] = round((tokens - self.last_tokens) / (now - self.last_time), 1)
            self.last_tokens, self.last_time = tokens, now
        rundir.append_metrics(self.run_dir, row)
        bad = [k for k in RUN_KEYS if isinstance(logs.get(k), float) and not math.isfinite(logs[k])]
        if bad and self.nan_step is None:
            self.nan_step = state.global_step
            control.should_training_stop = True
            rundir.update_status(self.run_dir, state="failed", error=f"non-finite {', '.join(bad)} at step "
                                 f"{state.global_step}: training stopped", failed_step=state.global_step)

    STATUS_EVERY_S = 2.0  # status.json is for pollers; rewriting it every step cost ~6% of a small step

    def on_step_end(self, args, state, control, **kw):
        if STOP["requested"]:  # a cancel: save a checkpoint at this step, then leave the loop
            control.should_save = True
            control.should_training_stop = True
        if not state.is_world_process_zero or self.nan_step is not None:
            return
        done = state.global_step
        total = max(state.max_steps, 1)
        now = time.time()
        if done < total and now - self.last_status < self.STATUS_EVERY_S:
            return
        self.last_status = now
        elapsed = time.time() - self.t0
        rate = (done - self.start_step) / elapsed if elapsed > 0 else 0
        eta = (total - done) / rate if rate > 0 else None
        rundir.update_status(self.run_dir, step=done, total_steps=total, percent=round(100 * done / total, 1),
                             eta_seconds=round(eta, 1) if eta is not None else None)
