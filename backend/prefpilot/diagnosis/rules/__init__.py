"""The catalogue of preference-training pathologies: one function per finding id.

Three families, one module each, so a new rule has an obvious home:
  signatures.py  fire from a single logged row (NaN, zero rewards, zero gradient, empty completions, ...)
  trends.py      need a run of logged points (no learning, margin explosion, displacement, spikes, ...)
  methods.py     only make sense for one trainer (SimPO's target margin)

Each rule reads a :class:`~prefpilot.diagnosis.parse.History` and its thresholds from
``skills/mlops/preference-diagnostics/references/findings.yaml`` (the numbers the skill's table
shows) and returns a finding dict or None. Which rules run for which method is also in that file
(``methods:``). Remedies are config changes relative to the run's config, each saying what value it
changes from and where that value came from (config, the log, or an assumed default).
Pure Python over lists: 100k logged steps take well under a second.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

from ..blocks import single
from ..parse import History

# TRL's defaults, used only when neither the config nor the log says (and the report says so).
DEFAULT_LR = 1e-6          # DPOConfig / CPOConfig learning_rate
DEFAULT_BETA = {"dpo": 0.1, "simpo": 2.0, "cpo": 0.1, "orpo": 0.1, "kto": 0.1}


@dataclass
class Ctx:
    hist: History
    method: str                 # "dpo" | "simpo" | "cpo" | "orpo" | "kto" | "unknown"
    cfg: dict                   # the run's (normalised) config, or {} when none was given
    table: dict                 # findings.yaml
    found: dict = field(default_factory=dict)   # id -> finding, for rules that defer to earlier ones
    split: str = "train"        # where the preference metrics are ("eval" for a model card's table)
    config_given: bool = False
    sources: dict = field(default_factory=dict)  # key -> where cfg's value came from ("config", "--beta")

    def th(self, fid: str) -> dict:
        return self.table["findings"][fid]["thresholds"]

    # -- the run's settings, and where each came from
    @cached_property
    def lr(self) -> tuple[float, str]:
        v = self.cfg.get("learning_rate")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
            return float(v), self.sources.get("learning_rate", "config")
        card = self.hist.info.get("hyperparameters", {}).get("learning_rate")
        if card:
            return float(card), "model card hyperparameters"
        code = _one_value(self.hist.info.get("hints", {}).get("learning_rate"))
        if code:
            return code, "the learning_rate written in the file's code"
        _, logged = self.finite("learning_rate", "train")
        if logged and max(logged) > 0:
            return max(logged), "logged learning_rate (peak)"
        return DEFAULT_LR, "TRL's default (assumed: not in a config or the log)"

    @cached_property
    def beta(self) -> tuple[float, str]:
        v = self.cfg.get("beta")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
            return float(v), self.sources.get("beta", "config")
        code = _one_value(self.hist.info.get("hints", {}).get("beta"))
        if code:
            return code, "the beta written in the file's code"
        logged = self.hist.info.get("beta_from_log")
        if logged:
            return float(f"{logged:.3g}"), "the log (rewards / log-probs)"
        d = DEFAULT_BETA.get(self.method, 0.1)
        who = "the SimPO paper's" if self.method == "simpo" else "TRL's"
        return d, f"{who} default (assumed: no config given)"

    @property
    def peft(self) -> bool | None:
        """True/False from the config; None when unknown: no config, or a partial one (``--beta``, a label's few
        stated settings) that says nothing about adapters. Only a whole run config (it names its model) implies
        full fine-tuning by leaving ``use_peft`` out."""
        if not self.config_given:
            return None
        if "use_peft" in self.cfg:
            return bool(self.cfg["use_peft"])
        if any(k.startswith("lora_") or k == "peft_config" for k in self.cfg):
            return True
        return False if self.cfg.get("model_name_or_path") else None

    # -- series
    def finite(self, key: str, split: str | None = None) -> tuple[list[float], list[float]]:
        split = split or self.split
        steps, vals = self.hist.series(key, split)
        if key not in self.hist.nonfinite[split]:  # the usual case: nothing to filter
            return steps, vals
        keep = [i for i, v in enumerate(vals) if math.isfinite(v)]
        return [steps[i] for i in keep], [vals[i] for i in keep]

    def post(self, key: str) -> tuple[list[float], list[float]]:
        """The finite values of ``key`` after warm-up."""
        steps, vals = self.finite(key)
        skip = math.ceil(self.table["warmup_fraction"] * len(vals))
        return steps[skip:], vals[skip:]

    def edge(self, n: int) -> int:
        return max(1, int(self.table["edge_fraction"] * n))

    @property
    def rows(self) -> list[dict]:
        return self.hist.train if self.split == "train" else self.hist.eval

    def step_known(self) -> bool:
        return not self.hist.info.get("steps_inferred")

    def at_start(self, row: dict) -> bool | None:
        """Is this row from the first moments of training? None when the log cannot tell."""
        s = self.table["start"]
        if self.step_known() and self.split == "train":
            return row["step"] <= s["max_step"]
        ep = row.get("epoch")
        if isinstance(ep, (int, float)) and math.isfinite(ep):
            return ep <= s["max_epoch"]
        return None

    @cached_property
    def frozen_steps(self) -> int:
        """How many first steps left the weights unchanged: logged one by one from step 1 with learning_rate
        exactly 0 (a warm-up that starts at 0). The step after them still scores policy == reference."""
        n = 0
        for row in self.hist.train:
            if row.get("step") != n + 1 or row.get("learning_rate") != 0.0:
                break
            n += 1
        return n

    def first_update(self, row: dict) -> bool | None:
        """Is this row the very first optimizer step (policy still equal to the reference)? None when unknown."""
        if self.step_known() and self.split == "train":
            return row["step"] <= 1 + self.frozen_steps
        if self.rows and row is not self.rows[0]:
            return False  # a later row comes after at least one update
        return None


def _one_value(values) -> float | None:
    """A positive number the file states exactly once (see blocks.single)."""
    return single(v for v in values or [] if isinstance(v, float) and v > 0)


def sig(x: float) -> float:
    """Two significant figures: remedies should read like a person wrote them."""
    return float(f"{x:.2g}")


def mean(v: list[float]) -> float:
    return sum(v) / len(v)


def pstdev(v: list[float]) -> float:
    """Population standard deviation (statistics.pstdev is exact but ~20× slower on long runs)."""
    if not v:
        return 0.0
    m = mean(v)
    return math.sqrt(sum((x - m) * (x - m) for x in v) / len(v))


def num(v):
    """Steps logged as 12.0 read as 12; other floats keep 4 decimals (4 significant figures when tiny)."""
    if isinstance(v, float) and math.isfinite(v):
        if v.is_integer() and abs(v) < 1e15:
            return int(v)
        return round(v, 4) if abs(v) >= 1e-3 else float(f"{v:.4g}")
    if isinstance(v, float):
        return str(v)  # nan/inf: JSON has no such numbers
    if isinstance(v, list):
        return [num(x) for x in v]
    return v


def finding(ctx: Ctx, fid: str, steps, evidence: dict, explanation: str, remedies: list[dict],
            severity: str | None = None) -> dict:
    return {"id": fid, "severity": severity or ctx.table["findings"][fid]["severity"],
            "steps": [num(steps[0]), num(steps[1])] if steps else None,
            "evidence": {k: num(v) for k, v in evidence.items()},
            "explanation": explanation, "remedies": remedies, "sources": ctx.table["findings"][fid]["sources"]}


def remedy(ctx: Ctx, change: dict, why: str) -> dict:
    """A config change, with the value each key changes from and where that value came from."""
    before = {}
    for k in change:
        if k == "learning_rate":
            v, src = ctx.lr
        elif k == "beta":
            v, src = ctx.beta
        elif k in ctx.cfg:
            v, src = ctx.cfg[k], ctx.sources.get(k, "config")
        else:
            continue
        before[k] = {"value": num(v) if isinstance(v, float) else v, "source": src}
    return {"change": change, "from": before, "why": why}


def scale_lr(ctx: Ctx, factor: float, why: str) -> dict:
    """learning_rate × factor (factor < 1 lowers it), from the run's own rate."""
    return remedy(ctx, {"learning_rate": sig(ctx.lr[0] * factor)}, why)


# Findings that say the training plumbing is broken: a learning-rate change cannot fix them, and the
# trend rules that would otherwise blame the learning rate defer to them.
PLUMBING = ("no_gradient", "reference_tracks_policy", "empty_completions", "reference_mismatch")


def plumbing(ctx: Ctx) -> bool:
    return any(ctx.found.get(f, {}).get("severity") in ("error", "warning") for f in PLUMBING)


from . import methods, signatures, trends  # noqa: E402  (the families use the helpers above)

# Order matters: later rules consult earlier findings (ctx.found) to avoid double reports.
CATALOGUE = {f.__name__: f for f in (
    signatures.nan_loss, signatures.nonfinite_metrics, signatures.no_gradient, signatures.empty_completions,
    signatures.reference_tracks_policy, signatures.reference_mismatch, signatures.instant_saturation,
    signatures.lr_out_of_range,
    trends.no_learning, trends.chance_accuracy, trends.negative_margin, trends.degeneration,
    trends.margin_explosion, trends.likelihood_displacement, trends.eval_divergence, trends.grad_spike,
    methods.simpo_margin_below_target, trends.lr_too_high, trends.too_few_points)}

__all__ = ["CATALOGUE", "Ctx", "PLUMBING"]
