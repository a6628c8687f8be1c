"""Evaluation during training (config ``eval: {every_steps, pairs, prompts, max_new_tokens}``): every
``every_steps`` optimizer steps, the model being trained is scored on held-out pairs and completes held-out
prompts, by the same code as `prefpilot eval` (engine.py, metrics.py), and the numbers go to metrics.jsonl as
``heldout/*`` metrics (see ``ROW_KEYS``), where the live diagnosis and ``stop_on`` judge them (``live_findings``).

The reference side costs nothing extra: at the first step the policy *is* the reference, so its log-probs and
completions are taken then and kept in eval/live_reference.json (a resumed run reads them back). What needs a
second model during training is left to `prefpilot eval`: the per-token KL to the reference.
Imports torch (through the engine) only when the callback is built, inside the training process.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import TrainerCallback

from .. import rundir
from .metrics import compare_generations, generation_summary, preference_summary

log = logging.getLogger("prefpilot.train")

PREFIX = "heldout/"
REFERENCE_FILE = "live_reference.json"


def settings(cfg: dict) -> dict | None:
    e = cfg.get("eval")
    if not isinstance(e, dict) or not e.get("every_steps"):
        return None
    return {"every_steps": int(e["every_steps"]), "pairs": int(e.get("pairs", 32)),
            "prompts": int(e.get("prompts", 4)), "max_new_tokens": int(e.get("max_new_tokens", 48))}


def metric_row(pref: dict, before: dict, gen: dict | None) -> dict:
    """The heldout/* metrics of one evaluation (flat numbers, what metrics.jsonl holds)."""
    row = {f"{PREFIX}pairs": pref["pairs"]}
    for key in ("summed", "per_token", "implicit"):
        if key in pref:
            row[f"{PREFIX}accuracy_{key}"] = round(pref[key]["accuracy"], 4)
            row[f"{PREFIX}margin_{key}"] = round(pref[key]["mean_margin"], 4)
        if key in before and key != "implicit":
            row[f"{PREFIX}reference_accuracy_{key}"] = round(before[key]["accuracy"], 4)
    if gen:
        for k in ("length_ratio", "cap_without_eos_rate", "repetition_rate", "empty_rate"):
            if gen.get(k) is not None:
                row[f"{PREFIX}{k}"] = round(gen[k], 4)
        row[f"{PREFIX}mean_length"] = round(gen["policy"]["mean_length"], 2)
        for k in ("mean_length", "cap_without_eos_rate", "repetition_rate", "empty_rate"):
            row[f"{PREFIX}reference_{k}"] = round(gen["reference"][k], 4)
    return row


def report_from_rows(rows: list[dict], method: str) -> dict | None:
    """An evaluation report (the shape `judge` reads) from the heldout/* metrics logged so far: the last
    evaluation is the model, the earlier ones are its checkpoints (for heldout_regression). Light: no torch."""
    evals = [r for r in rows if isinstance(r, dict) and isinstance(r.get(f"{PREFIX}pairs"), (int, float))]
    if not evals:
        return None

    def acc(r, pre=""):
        return {k: r[f"{PREFIX}{pre}accuracy_{k}"] for k in ("summed", "per_token", "implicit")
                if isinstance(r.get(f"{PREFIX}{pre}accuracy_{k}"), (int, float))}

    last = evals[-1]
    report = {"method": method, "model": f"step {last.get('step')}", "pairs": int(last[f"{PREFIX}pairs"]),
              "preference_accuracy": acc(last), "before": acc(last, "reference_"),
              "checkpoints": [{"name": f"step {r.get('step')}", "step": r.get("step"),
                               "preference_accuracy": acc(r)} for r in evals]}
    if isinstance(last.get(f"{PREFIX}repetition_rate"), (int, float)):
        g = {k: last.get(f"{PREFIX}{k}") for k in ("length_ratio", "cap_without_eos_rate", "repetition_rate",
                                                   "empty_rate")}
        g["policy"] = {"mean_length": last.get(f"{PREFIX}mean_length", 0.0)}
        g["reference"] = {k: last.get(f"{PREFIX}reference_{k}", 0.0)
                          for k in ("mean_length", "cap_without_eos_rate", "repetition_rate", "empty_rate")}
        report["generation"] = g
    return report


def with_live_findings(report: dict, rows: list[dict], cfg: dict) -> dict:
    """A curve diagnosis plus the findings of the evaluations logged during training (``heldout/*`` rows), said
    plainly when the curves are healthy and the model is not."""
    found = live_findings(rows, cfg)
    if not found:
        return report
    report["findings"] = report["findings"] + found
    bad = [f["id"] for f in found if f["severity"] in ("error", "warning")]
    if bad:
        what = f"the model at {found[0]['source'][len('evaluation during training ('):-1]}: {', '.join(bad)}"
        report["summary"] = (f"healthy curves, unhealthy model: {what} (curves: {report['summary']})"
                             if report["verdict"] == "healthy" else f"{report['summary']}; {what}")
        report["verdict"], report["healthy"] = "problems", False
    return report


def live_findings(rows: list[dict], cfg: dict) -> list[dict]:
    """Evaluation findings from the heldout/* metrics in ``rows`` (none logged: none), each saying at which step."""
    from .judge import judge
    method = cfg.get("method", "dpo")
    report = report_from_rows(rows, method)
    if report is None:
        return []
    train = [r["rewards/accuracies"] for r in rows if isinstance(r.get("rewards/accuracies"), (int, float))]
    tail = train[-max(1, len(train) // 10):]
    out = judge(report, cfg, sum(tail) / len(tail) if tail else None)
    for f in out:
        f["source"] = f"evaluation during training ({report['model']})"
        f["steps"] = [report["checkpoints"][0]["step"], report["checkpoints"][-1]["step"]]
    return out


class LiveEval(TrainerCallback):
    """Scores the model every ``every_steps`` steps and hands the heldout/* row to ``record`` (RunRecorder)."""

    def __init__(self, run_dir, rows: list[dict], tok, cfg: dict, record):
        self.run_dir = Path(run_dir)
        self.s = settings(cfg)
        self.rows = rows[:self.s["pairs"]]
        self.tok = tok
        self.cfg = cfg
        self.record = record
        self.beta = float(cfg.get("beta", 0.1)) if cfg.get("method", "dpo") == "dpo" else None
        self.max_length = cfg.get("max_length") or 1024
        self.ref = None  # {"logps": ..., "samples": ...} of the model before its first update
        self.skip = None

    def on_train_begin(self, args, state, control, model=None, **kw):
        if args.world_size > 1:
            self.skip = "multi-process training: run `prefpilot eval` on the checkpoints instead"
        elif not self.rows:
            self.skip = "no held-out pairs (the data has no test split and eval_holdout is false)"
        if self.skip:
            if state.is_world_process_zero:
                log.warning("evaluation during training skipped: %s", self.skip)
                rundir.update_status(self.run_dir, live_eval={"skipped": self.skip})
            return
        from . import engine
        self.pairs = engine.tokenize_pairs(self.rows, self.tok, self.max_length)
        self.prompt_ids = [p["prompt_ids"] for p in self.pairs[:self.s["prompts"]]]
        f = self.run_dir / "eval" / REFERENCE_FILE
        if state.global_step > 0:  # resumed: the reference was taken at the run's first step
            try:
                self.ref = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self.skip = f"resumed without {f} (the reference's scores are taken at step 0)"
                rundir.update_status(self.run_dir, live_eval={"skipped": self.skip})
            return
        self.ref = self._measure(model)
        f.parent.mkdir(exist_ok=True)
        rundir.write_json_atomic(f, self.ref)

    def _measure(self, model) -> dict:
        from . import engine
        was_training = model.training
        model.eval()
        try:
            pad = self.tok.pad_token_id
            logps = engine.pair_logps(model, self.pairs, pad, self.max_length)
            samples = (engine.generate(model, self.tok, self.prompt_ids, self.s["max_new_tokens"],
                                       first=logps.get("first")) if self.prompt_ids else [])
        finally:
            model.train(was_training)
        return {"logps": logps, "samples": samples}

    def on_step_end(self, args, state, control, model=None, **kw):
        step = state.global_step
        if self.skip or self.ref is None or step % self.s["every_steps"] or model is None:
            return
        now = self._measure(model)
        ref_logps = self.ref["logps"]
        pref = preference_summary(now["logps"], ref_logps, self.beta)
        before = preference_summary(ref_logps, ref_logps, self.beta)
        gen = None
        if self.prompt_ids:
            n = self.s["max_new_tokens"]
            gen = compare_generations(generation_summary(now["samples"], n),
                                      generation_summary(self.ref["samples"], n), [])
        row = metric_row(pref, before, gen)
        self.record(row, state, control)
