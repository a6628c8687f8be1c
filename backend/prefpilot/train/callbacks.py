"""A TrainerCallback that writes metrics.jsonl and status.json as training goes, and diagnoses the run live.

The diagnosis rules (prefpilot.diagnosis) run on the history so far: at once when a row holds NaN/inf,
otherwise at most every ``every_s`` seconds (a long run's history grows, and each pass reads all of it).
The current findings go to status.json; config ``diagnose: {stop_on: ...}`` decides which of them stop
the run, with a checkpoint, the reason in status.json.
"""
from __future__ import annotations

import math
import time

from transformers import TrainerCallback

from .. import rundir

from .stop import STOP  # set by the SIGTERM handler (entry.py)

# stop_on: which findings stop a run. "nonfinite" (the default) keeps the old promise: NaN/inf stops it.
STOP_ON = ("never", "nonfinite", "error", "warning")
NONFINITE = ("nan_loss", "nonfinite_metrics")
DEFAULTS = {"stop_on": "nonfinite", "min_steps": 10, "every_s": 10.0}


def live_settings(cfg: dict) -> dict:
    return {**DEFAULTS, **(cfg.get("diagnose") or {})}


def should_stop(finding: dict, stop_on: str, step: int, min_steps: int, kinds: dict) -> bool:
    """Signatures stop at once; trend findings only after ``min_steps`` (early points are noisy)."""
    if stop_on == "never":
        return False
    if stop_on == "nonfinite":
        return finding["id"] in NONFINITE
    levels = ("error",) if stop_on == "error" else ("error", "warning")
    if finding["severity"] not in levels:
        return False
    return kinds.get(finding["id"]) == "signature" or step >= min_steps


class RunRecorder(TrainerCallback):
    def __init__(self, run_dir, start_step: int = 0, config: dict | None = None):
        self.run_dir = run_dir
        self.t0 = time.time()
        self.start_step = start_step
        self.last_tokens = None
        self.last_time = None
        self.last_status = 0.0
        self.config = dict(config or {})
        self.live = live_settings(self.config)
        self.rows: list[dict] = []
        self.last_diagnosis = 0.0
        self.stopped_by: dict | None = None
        self.world_size = 1
        self.stop_pending = False  # several processes: the diagnosis' stop waits for the next step's agreement
        lease = self.config.get("max_wall_time")
        self.lease_s = float(lease) if isinstance(lease, (int, float)) and lease > 0 else None
        self.lease_spent = False
        # The lease covers the whole run: seconds trained before a resume count against it (issue 22 item 13).
        used = rundir.read_status(run_dir).get("lease_used_s")
        self.used_before = float(used) if isinstance(used, (int, float)) and used > 0 else 0.0

    def lease_used(self) -> float:
        return round(self.used_before + (time.time() - self.t0), 1)

    def on_train_begin(self, args, state, control, **kw):
        self.world_size = args.world_size
        if state.is_world_process_zero:
            # world_size: how many processes each step's batch was split over (eval sizes its defaults by it)
            rundir.update_status(self.run_dir, state="running", total_steps=state.max_steps, step=state.global_step,
                                 world_size=args.world_size)
        self.t0 = time.time()
        self.start_step = state.global_step
        STOP["in_loop"] = True

    def on_train_end(self, args, state, control, **kw):
        STOP["in_loop"] = False
        if state.is_world_process_zero:
            rundir.update_status(self.run_dir, lease_used_s=self.lease_used())

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
        self.rows.append(row)
        bad = any(isinstance(v, float) and not math.isfinite(v) for v in logs.values())
        if self.stopped_by is None and (bad or now - self.last_diagnosis >= self.live["every_s"]):
            self.last_diagnosis = now
            self._diagnose(state, control)

    def record(self, row: dict, state, control) -> None:
        """A row computed outside TRL's logging (the heldout/* metrics of evaluation during training): written like
        a logged row and diagnosed at once, so stop_on can act on what the evaluation found."""
        if not state.is_world_process_zero:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4),
               "wall_time": round(time.time() - self.t0, 3), **row}
        rundir.append_metrics(self.run_dir, row)
        self.rows.append(row)
        if self.stopped_by is None:
            self.last_diagnosis = time.time()
            self._diagnose(state, control)

    def _diagnose(self, state, control) -> None:
        from ..diagnosis import catalogue, diagnose
        from ..evaluation.live import with_live_findings
        try:
            report = with_live_findings(diagnose(list(self.rows), config=self.config), self.rows, self.config)
        except Exception as exc:  # the diagnosis must never take the training down
            rundir.update_status(self.run_dir, diagnosis_error=f"{type(exc).__name__}: {exc}")
            return
        kinds = {fid: f["kind"] for fid, f in catalogue()["findings"].items()}
        kinds.update({fid: "evaluation" for fid in catalogue().get("evaluation", {})})
        current = [{"id": f["id"], "severity": f["severity"], "steps": f["steps"],
                    "explanation": f["explanation"][:300]} for f in report["findings"]]
        fields = {"findings": current, "verdict": report["verdict"]}
        for f in report["findings"]:
            if should_stop(f, self.live["stop_on"], state.global_step, self.live["min_steps"], kinds):
                self.stopped_by = {"id": f["id"], "severity": f["severity"], "step": state.global_step,
                                   "explanation": f["explanation"], "stop_on": self.live["stop_on"]}
                fields["stopped_by"] = self.stopped_by
                if self.world_size > 1:  # only rank 0 diagnoses: every rank stops at the next step together
                    self.stop_pending = True
                else:
                    control.should_save = True  # a checkpoint at this step, to inspect or to resume from
                    control.should_training_stop = True
                break
        rundir.update_status(self.run_dir, **fields)

    STATUS_EVERY_S = 2.0  # status.json is for pollers; rewriting it every step cost ~6% of a small step

    def on_step_end(self, args, state, control, **kw):
        lease_spent = self.lease_s is not None and not self.lease_spent and self.lease_used() >= self.lease_s
        if args.world_size > 1:  # every process stops at the same step, whichever of them got the signal
            STOP["requested"], lease_spent, diagnosed = _agree(args, STOP["requested"], lease_spent, self.stop_pending)
            if diagnosed:  # rank 0's live diagnosis stopped the run: all save this step's checkpoint and stop
                self.stop_pending = False
                if self.stopped_by is None:  # the other ranks: only rank 0 knows the finding
                    self.stopped_by = {"id": "live_diagnosis", "severity": "error", "step": state.global_step,
                                       "explanation": "rank 0's live diagnosis stopped the run", "stop_on": ""}
                control.should_save = True
                control.should_training_stop = True
        if STOP["requested"]:  # a cancel: save a checkpoint at this step, then leave the loop
            control.should_save = True
            control.should_training_stop = True
        if lease_spent:
            self.lease_spent = True  # the run's lease (max_wall_time) is spent: checkpoint and stop, like a cancel
            control.should_save = True
            control.should_training_stop = True
        if not state.is_world_process_zero or self.stopped_by is not None:
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
                             eta_seconds=round(eta, 1) if eta is not None else None, lease_used_s=self.lease_used())


def _agree(args, *flags: bool) -> list[bool]:
    """Each flag true on any process is true on all (one small all-reduce per step): a SIGTERM that reached
    one node a step earlier than another must not leave the other waiting in a collective for ever."""
    import torch
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return list(flags)
    t = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32, device=args.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(x) for x in t.tolist()]
