"""Row findings that need no model: one streaming pass, bounded memory (pure Python).

Duplicates are found by a 16-byte hash per row, so a million pairs cost about 100 MB at most; every other
finding keeps counts and the first few row numbers (1-based, as the file counts them).
"""
from __future__ import annotations

import hashlib
import json
import math

from .layouts import text_of

SHOWN = 5  # row numbers kept per finding
# length_bias: a warning when most pairs prefer the longer answer by a clear ratio: DPO then learns length
# (the motivation of SimPO, Meng et al. 2024, and of LD-DPO, Liu et al. 2024). 0.7 and 1.3 are prefpilot's
# choice of "clearly": a share and a ratio both well past an even split.
LENGTH_BIAS_SHARE = 0.7
LENGTH_BIAS_RATIO = 1.3
LENGTH_BIAS_MIN_PAIRS = 20
FEW_STEPS = 10  # fewer optimizer steps leave no room for warm-up, and too few logged points to diagnose


class RowStats:
    """Feed TRL-layout rows one by one (``add``), then ``findings(plan)``."""

    def __init__(self):
        self.rows = 0
        self.usable = 0
        self.seen: set[bytes] = set()
        self.first_of: dict[bytes, int] = {}
        self.hits: dict[str, list[int]] = {}
        self.counts: dict[str, int] = {}
        self.longer = 0
        self.log_ratio_sum = 0.0
        self.pairs_measured = 0
        self.labels = {True: 0, False: 0}
        self.scored = 0

    def _hit(self, fid: str, n: int) -> None:
        self.counts[fid] = self.counts.get(fid, 0) + 1
        shown = self.hits.setdefault(fid, [])
        if len(shown) < SHOWN:
            shown.append(n)

    def add(self, n: int, row: dict) -> None:
        self.rows += 1
        if "completion" in row:  # unpaired (KTO): no pair to compare
            self.labels[bool(row.get("label"))] += 1
            if not text_of(row.get("completion")).strip():
                self._hit("empty_completion", n)
            else:
                self.usable += 1
            return
        c, r = text_of(row.get("chosen")), text_of(row.get("rejected"))
        if not c.strip() or not r.strip():
            self._hit("empty_completion", n)
            return
        if c == r:
            self._hit("identical_pair", n)
            return
        self.usable += 1
        key = hashlib.blake2b(json.dumps([row.get("prompt"), row.get("chosen"), row.get("rejected")],
                                         sort_keys=True, ensure_ascii=False).encode(), digest_size=16).digest()
        if key in self.seen:
            self._hit("duplicate_pairs", n)
        else:
            self.seen.add(key)
        self.measure(len(c), len(r))

    def scores(self, n: int, row: dict) -> None:
        """Rows that carry the judge's scores (UltraFeedback, many synthetic sets): ties and inversions are
        pairs whose label the scores themselves do not support."""
        sc, sr = row.get("score_chosen"), row.get("score_rejected")
        if isinstance(sc, (int, float)) and isinstance(sr, (int, float)) and not isinstance(sc, bool):
            self.scored += 1
            if sc == sr:
                self._hit("tied_scores", n)
            elif sc < sr:
                self._hit("inverted_scores", n)

    def measure(self, chosen_len: int, rejected_len: int) -> None:
        if chosen_len and rejected_len:
            self.pairs_measured += 1
            self.longer += chosen_len > rejected_len
            self.log_ratio_sum += math.log(chosen_len / rejected_len)

    def length(self, unit: str = "characters") -> dict | None:
        if not self.pairs_measured:
            return None
        return {"unit": unit, "pairs": self.pairs_measured,
                "chosen_longer_share": round(self.longer / self.pairs_measured, 3),
                "mean_length_ratio": round(math.exp(self.log_ratio_sum / self.pairs_measured), 3)}

    def findings(self, plan: dict | None = None, length: dict | None = None) -> list[dict]:
        out = []
        if self.counts.get("empty_completion"):
            out.append(finding("empty_completion", "error", self, "chosen, rejected or completion is empty: "
                               "nothing to score on that side (an empty completion gives TRL a NaN or a zero "
                               "log-prob)", "drop these rows, or fill in the missing answer"))
        if self.counts.get("identical_pair"):
            out.append(finding("identical_pair", "error", self, "chosen and rejected are the same text: the pair "
                               "teaches nothing and its margin stays 0", "drop these rows"))
        if self.counts.get("duplicate_pairs"):
            out.append(finding("duplicate_pairs", "warning", self, "the same prompt/chosen/rejected appears more "
                               "than once: those pairs weigh more, and a test split may overlap the train split",
                               "deduplicate the file (keep the first of each)"))
        for fid, what in (("tied_scores", "score_chosen equals score_rejected: the judge saw no difference, so the "
                                          "pair's label is a coin toss (label noise)"),
                          ("inverted_scores", "score_chosen is below score_rejected: the label contradicts the "
                                              "scores it came from")):
            if self.counts.get(fid):
                out.append(finding(fid, "warning" if self.counts[fid] / max(1, self.scored) >= 0.05 else "info",
                                   self, what + f"; {self.counts[fid]} of {self.scored} scored pairs",
                                   "drop these pairs, or keep only pairs with a clear score gap"))
        length = length or self.length()
        if length and length["pairs"] >= LENGTH_BIAS_MIN_PAIRS and (
                length["chosen_longer_share"] >= LENGTH_BIAS_SHARE and length["mean_length_ratio"] >= LENGTH_BIAS_RATIO):
            out.append({"id": "length_bias", "severity": "warning", "rows": [], "count": length["pairs"],
                        "explanation": f"the chosen answer is the longer one in {length['chosen_longer_share']:.0%} "
                                       f"of {length['pairs']} pairs (mean ratio {length['mean_length_ratio']:.2f}, "
                                       f"in {length['unit']}): DPO can learn length instead of quality",
                        "remedy": "balance lengths in the data, or train SimPO (length-normalised) or DPO with "
                                  "ld_alpha (LD-DPO); watch `prefpilot eval`'s length_ratio"})
        elif length and length["pairs"] >= LENGTH_BIAS_MIN_PAIRS and (
                length["chosen_longer_share"] <= 1 - LENGTH_BIAS_SHARE and length["mean_length_ratio"] <= 1 / LENGTH_BIAS_RATIO):
            out.append({"id": "length_bias", "severity": "info", "rows": [], "count": length["pairs"],
                        "explanation": f"the chosen answer is the shorter one in "
                                       f"{1 - length['chosen_longer_share']:.0%} of {length['pairs']} pairs (mean "
                                       f"ratio {length['mean_length_ratio']:.2f}, in {length['unit']}): the run "
                                       "will learn brevity as much as anything else; fine when that is the goal",
                        "remedy": "if brevity is not the goal, balance lengths; watch `prefpilot eval`'s "
                                  "length_ratio and empty_rate"})
        if plan:
            out += few_pairs(self.usable, plan)
        return out


def finding(fid: str, severity: str, stats: RowStats, what: str, remedy: str) -> dict:
    n = stats.counts[fid]
    rows = stats.hits[fid]
    return {"id": fid, "severity": severity, "rows": rows, "count": n,
            "explanation": f"{n} row(s): {what} (rows {', '.join(map(str, rows))}{' …' if n > len(rows) else ''})",
            "remedy": remedy}


def few_pairs(pairs: int, plan: dict) -> list[dict]:
    """Too few usable pairs for the planned batch and steps. ``plan``: effective_batch, epochs, max_steps."""
    batch = max(1, int(plan.get("effective_batch") or 1))
    epochs = float(plan.get("epochs") or 1)
    steps = int(plan["max_steps"]) if plan.get("max_steps", -1) and plan.get("max_steps", -1) > 0 else \
        math.ceil(pairs / batch * epochs)
    if pairs < batch:
        sev, why = "error", f"{pairs} usable pairs do not fill one optimizer batch of {batch}"
    elif plan.get("max_steps", -1) and plan["max_steps"] > 0 and plan["max_steps"] * batch > pairs * 4:
        sev, why = "warning", (f"max_steps {plan['max_steps']} × batch {batch} passes over the {pairs} pairs "
                               f"{plan['max_steps'] * batch / pairs:.0f} times: the run memorises them")
    elif steps < FEW_STEPS:
        sev, why = "warning", (f"{pairs} pairs make {steps} optimizer step(s) at batch {batch} × {epochs:g} "
                               f"epoch(s): too few to warm up and to diagnose")
    else:
        return []
    return [{"id": "few_pairs", "severity": sev, "rows": [], "count": pairs, "explanation": why,
             "remedy": "add pairs, or lower the batch (per_device_train_batch_size × gradient_accumulation_steps)"}]
