"""The catalogue of reward-margin pathologies: one function per finding id.

Each rule reads a :class:`~prefpilot.diagnosis.parse.History` and the thresholds from
``skills/mlops/preference-diagnostics/references/findings.yaml`` (the same numbers the
skill's table shows) and returns a finding dict or None. Remedies are config changes
relative to the run's config; the engine drops any that would not validate.
Pure Python over lists: 100k logged steps take well under a second.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import median

from .parse import History

NONFINITE_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
                  "nll_loss")


@dataclass
class Ctx:
    hist: History
    method: str                 # "dpo" | "simpo"
    cfg: dict                   # the run's (normalised) config, or a default one
    table: dict                 # findings.yaml
    found: dict                 # id -> finding, for rules that defer to earlier ones

    def th(self, fid: str) -> dict:
        return self.table["findings"][fid]["thresholds"]

    @property
    def lr(self) -> float:
        v = self.cfg.get("learning_rate")
        return float(v) if isinstance(v, (int, float)) and v > 0 else 1e-6  # TRL's DPOConfig/CPOConfig default

    @property
    def beta(self) -> float:
        v = self.cfg.get("beta")
        return float(v) if isinstance(v, (int, float)) and v > 0 else (2.0 if self.method == "simpo" else 0.1)

    def finite(self, key: str, split: str = "train") -> tuple[list[float], list[float]]:
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
    if isinstance(v, list):
        return [num(x) for x in v]
    return v


def finding(ctx: Ctx, fid: str, steps, evidence: dict, explanation: str, remedies: list[dict],
            severity: str | None = None) -> dict:
    return {"id": fid, "severity": severity or ctx.table["findings"][fid]["severity"],
            "steps": [num(steps[0]), num(steps[1])] if steps else None,
            "evidence": {k: num(v) for k, v in evidence.items()},
            "explanation": explanation, "remedies": remedies}


def lower_lr(ctx: Ctx, factor: float, why: str) -> dict:
    return {"change": {"learning_rate": sig(ctx.lr / factor)}, "why": why}


# ----------------------------------------------------------------------------- rules
def nan_loss(ctx: Ctx):
    first = None
    bad_steps = set()
    keys = set()
    for split in ("train", "eval"):
        for k in NONFINITE_KEYS:
            if k not in ctx.hist.nonfinite[split]:  # recorded while parsing: no rescan of a long run
                continue
            steps, vals = ctx.hist.series(k, split)
            hit = [s for s, v in zip(steps, vals) if not math.isfinite(v)]
            keys.add(f"eval_{k}" if split == "eval" else k)
            bad_steps.update((split, s) for s in hit)
            first = min(hit) if first is None else min(first, min(hit))
    count = len(bad_steps)
    if first is None:
        return None
    last = ctx.hist.train[-1]["step"] if ctx.hist.train else first
    remedies = [lower_lr(ctx, 10, "a smaller step keeps the log-ratios finite"),
                {"change": {"max_grad_norm": 1.0}, "why": "clip gradients so one batch cannot blow up the weights"}]
    if ctx.cfg.get("fp16"):
        remedies.insert(0, {"change": {"fp16": False, "bf16": True},
                            "why": "fp16 overflows on large log-prob sums; bf16 has fp32's range"})
    return finding(ctx, "nan_loss", [first, last], {"first_step": first, "rows_affected": count,
                                                    "keys": sorted(keys)},
                   f"Non-finite values ({', '.join(sorted(keys))}) first at step {first:g}: every later update is "
                   "garbage. Usual causes: fp16 overflow, a learning rate far too high, empty completions, "
                   "exo_pair with label_smoothing 0.", remedies)


def no_learning(ctx: Ctx):
    t = ctx.th("no_learning")
    ls, loss = ctx.post("loss")
    ms, marg = ctx.post("rewards/margins")
    if len(loss) < t["min_points"] and len(marg) < t["min_points"]:
        return None
    ev = {}
    if len(loss) >= t["min_points"]:
        _, all_loss = ctx.finite("loss")
        start = all_loss[0]
        dev = max(abs(v - start) for v in loss)
        if dev > t["loss_tolerance"]:
            return None
        ev.update(loss_start=start, loss_max_deviation=dev)
    if len(marg) >= t["min_points"]:
        _, all_m = ctx.finite("rewards/margins")
        dev = max(abs(v - all_m[0]) for v in marg)
        if dev > t["margin_tolerance"]:
            return None
        ev.update(margin_start=all_m[0], margin_max_deviation=dev)
    steps = ls or ms
    remedies = [{"change": {"learning_rate": sig(ctx.lr * 5)},
                 "why": "the most common cause: the step is too small to move the log-ratios"}]
    explanation = (f"Loss and margins stay at their start values for {len(steps)} logged points past warm-up: "
                   "the policy is not moving away from the reference. Check the learning rate, that weights are "
                   "trainable (LoRA target modules), that the reference is not synced to the policy every step, "
                   "and that chosen differs from rejected in the data.")
    if ctx.cfg.get("use_peft") and not ctx.cfg.get("lora_target_modules"):
        remedies.append({"change": {"lora_target_modules": "all-linear"},
                         "why": "LoRA without target modules may train nothing"})
    return finding(ctx, "no_learning", [steps[0], steps[-1]], ev, explanation, remedies)


def chance_accuracy(ctx: Ctx):
    if "no_learning" in ctx.found:
        return None
    t = ctx.th("chance_accuracy")
    steps, acc = ctx.post("rewards/accuracies")
    if len(acc) < t["min_points"]:
        return None
    tail = acc[-max(1, len(acc) // 3):]
    m, mt = mean(acc), mean(tail)
    if not (t["low"] <= m <= t["high"] and t["low"] <= mt <= t["high"]):
        return None
    remedies = [{"change": {"learning_rate": sig(ctx.lr * 3)}, "why": "too small a step leaves pairs unseparated"}]
    if ctx.method == "dpo":
        remedies.append({"change": {"loss_type": ["robust"], "label_smoothing": 0.1},
                         "why": "robust DPO tolerates a share of flipped labels (Chowdhury et al. 2024)"})
    return finding(ctx, "chance_accuracy", [steps[0], steps[-1]], {"mean_accuracy": m, "last_third_accuracy": mt},
                   f"Preference accuracy averages {m:.2f} past warm-up ({mt:.2f} over the last third): the model "
                   "cannot tell chosen from rejected. Noisy labels, too little signal per pair, or too small a "
                   "learning rate.", remedies)


def negative_margin(ctx: Ctx):
    if "no_learning" in ctx.found:
        return None
    t = ctx.th("negative_margin")
    steps, marg = ctx.post("rewards/margins")
    if len(marg) < t["min_points"]:
        return None
    neg = sum(1 for v in marg if v < 0) / len(marg)
    m = mean(marg)
    _, acc = ctx.post("rewards/accuracies")
    acc_m = mean(acc) if acc else None
    if not (m <= t["mean_margin_below"]
            and (neg >= t["negative_fraction"] or (acc_m is not None and acc_m < t["accuracy_below"]))):
        return None
    remedies = [{"change": {}, "why": "check the data: are chosen and rejected swapped (a column mapping, "
                                      "a sign flip in a preference score)? Swap them at the source."}]
    if ctx.method == "dpo":
        remedies.append({"change": {"loss_type": ["robust"], "label_smoothing": 0.2},
                         "why": "if only part of the labels is flipped, robust DPO discounts them"})
    ev = {"share_negative": neg, "mean_margin": m}
    if acc_m is not None:
        ev["mean_accuracy"] = acc_m
    return finding(ctx, "negative_margin", [steps[0], steps[-1]], ev,
                   f"Margins are below zero at {neg:.0%} of the logged points past warm-up (mean {m:.3g}): the "
                   "model is learning to prefer the rejected answers. Usually swapped labels.", remedies)


def margin_explosion(ctx: Ctx):
    t = ctx.th("margin_explosion")
    steps, marg = ctx.finite("rewards/margins")
    n = len(marg)
    ev, why = {}, []
    first_step = None
    if n >= t["min_points"]:
        k = ctx.edge(n)
        last, half = mean(marg[-k:]), mean(marg[n // 2 - k // 2: n // 2 - k // 2 + k])
        limit = t["margin_above"]
        if ctx.method == "simpo":
            limit = max(limit, t["simpo_margin_gammas"] * float(ctx.cfg.get("simpo_gamma") or 0))
        if last > limit and last > t["growth_since_half"] * max(half, 1e-9):
            ev.update(last_margin=last, half_way_margin=half, limit=limit)
            why.append(f"the margin reached {last:.3g} (over {limit:g}) and grew {last / max(half, 1e-9):.1f}× "
                       "since half-way")
            first_step = steps[n // 2]
    asteps, acc = ctx.finite("rewards/accuracies")
    severity = None
    if len(acc) >= t["min_points"]:
        cut = int(t["pinned_before_fraction"] * len(acc))
        # the earliest point i from which accuracy stays (almost) always at 1.0; ones[i] = count of 1.0 in acc[i:]
        ones = [0] * (len(acc) + 1)
        for j in range(len(acc) - 1, -1, -1):
            ones[j] = ones[j + 1] + (acc[j] >= 0.999)
        severity = None
        for i in range(0, max(cut, 1)):
            share = ones[i] / (len(acc) - i)
            if acc[i] >= 0.999 and share >= t["pinned_share"]:
                ev.update(pinned_from_step=asteps[i], share_at_1=round(share, 3))
                first_step = asteps[i] if first_step is None else min(first_step, asteps[i])
                growth = None
                if n >= t["min_points"]:
                    k = ctx.edge(n)
                    half = mean(marg[n // 2 - k // 2: n // 2 - k // 2 + k])
                    growth = mean(marg[-k:]) / half if half > 0 else None
                    ev["margin_growth_since_half"] = growth
                if not why and (growth is None or growth < t["pinned_margin_growth"]):
                    # saturated, not running away: the pairs are easy for this model
                    severity = "info"
                    why.append(f"accuracy is 1.0 from step {asteps[i]:g} on, but the margin has levelled off "
                               "(the pairs are easy for this model; watch held-out metrics)")
                else:
                    why.append(f"accuracy is pinned at 1.0 from step {asteps[i]:g} (within the first "
                               f"{t['pinned_before_fraction']:.0%} of the run) while the margin keeps growing")
                break
    if not why:
        return None
    remedies = [lower_lr(ctx, 3, "slower updates stop the margin running away")]
    if ctx.method == "dpo":
        remedies.insert(0, {"change": {"beta": sig(min(ctx.beta * 3, 1.0))},
                            "why": "a larger β keeps the policy closer to the reference"})
        remedies.append({"change": {"loss_type": ["ipo"]},
                         "why": "IPO regresses to a target margin instead of pushing it to infinity (Azar et al. 2023)"})
    else:
        remedies.append({"change": {"num_train_epochs": 1}, "why": "one pass over the pairs overfits less"})
    last_step = (steps or asteps)[-1]
    if severity == "info":
        return finding(ctx, "margin_explosion", [first_step, last_step], ev, "Saturated: " + why[0] + ".",
                       remedies, severity="info")
    return finding(ctx, "margin_explosion", [first_step, last_step], ev,
                   "Overfitting: " + "; ".join(why) + ". With sigmoid DPO the loss can approach 0 by pushing "
                   "rejected log-probs down without limit.", remedies)


def likelihood_displacement(ctx: Ctx):
    t = ctx.th("likelihood_displacement")
    cs, ch = ctx.finite("logps/chosen")
    _, rj = ctx.finite("logps/rejected")
    if len(ch) < 4 or len(rj) < 4:
        return None
    k = ctx.edge(len(ch))
    c0, c1 = mean(ch[:k]), mean(ch[-k:])
    kr = ctx.edge(len(rj))
    r0, r1 = mean(rj[:kr]), mean(rj[-kr:])
    drop = c0 - c1
    nats = t["simpo_nats_per_token"] if ctx.method == "simpo" else t["dpo_nats"]
    if not (drop > t["relative_drop"] * abs(c0) and drop > nats and r1 < r0):
        return None
    _, marg = ctx.finite("rewards/margins")
    if len(marg) >= 4:
        km = ctx.edge(len(marg))
        if mean(marg[-km:]) <= mean(marg[:km]):
            return None  # margins not rising: a different problem (see the other findings)
    if ctx.method == "dpo":
        remedies = [{"change": {"loss_type": ["sigmoid", "sft"]},
                     "why": "an SFT term on chosen keeps its likelihood up (RPO; Pang et al. 2024)"},
                    lower_lr(ctx, 2, "slower updates displace less mass"),
                    {"change": {"loss_type": ["apo_zero"]},
                     "why": "APO-zero raises chosen likelihood explicitly (D'Oosterlinck et al. 2024)"}]
    else:
        remedies = [{"change": {"cpo_alpha": 0.1}, "why": "a small SFT term on chosen (the SimPO README's fix)"},
                    lower_lr(ctx, 2, "slower updates displace less mass")]
    return finding(ctx, "likelihood_displacement", [cs[0], cs[-1]],
                   {"chosen_logp_start": c0, "chosen_logp_end": c1, "rejected_logp_start": r0,
                    "rejected_logp_end": r1, "chosen_drop": drop},
                   f"Chosen log-prob fell from {c0:.3g} to {c1:.3g} while rejected fell from {r0:.3g} to {r1:.3g}: "
                   "the margin grows because both lose probability, which moves to answers in neither set "
                   "(Razin et al. 2024). Generations can degrade even though the margin looks good.", remedies)


def eval_divergence(ctx: Ctx):
    t = ctx.th("eval_divergence")
    why, ev = [], {}
    best_step = None
    es, em = ctx.finite("rewards/margins", "eval")
    if len(em) >= t["min_eval_points"]:
        i = max(range(len(em)), key=em.__getitem__)
        if em[i] > 0 and i < len(em) - 1 and em[-1] < t["eval_margin_share_of_best"] * em[i]:
            why.append(f"eval margin fell from its best {em[i]:.3g} (step {es[i]:g}) to {em[-1]:.3g}")
            ev.update(best_eval_margin=em[i], last_eval_margin=em[-1])
            best_step = es[i]
    ls, el = ctx.finite("loss", "eval")
    if len(el) >= t["min_eval_points"]:
        i = min(range(len(el)), key=el.__getitem__)
        if i < len(el) - 1 and el[-1] > t["eval_loss_over_min"] * el[i]:
            why.append(f"eval loss rose from its minimum {el[i]:.3g} (step {ls[i]:g}) to {el[-1]:.3g}")
            ev.update(min_eval_loss=el[i], last_eval_loss=el[-1])
            best_step = ls[i] if best_step is None else min(best_step, ls[i])
    if not why:
        return None
    ts, tm = ctx.finite("rewards/margins")
    tl_s, tl = ctx.finite("loss")
    after = [v for s, v in zip(ts, tm) if s >= best_step]
    lafter = [v for s, v in zip(tl_s, tl) if s >= best_step]
    rising = (len(after) >= 2 and after[-1] > after[0]) or (len(lafter) >= 2 and lafter[-1] < lafter[0])
    if not rising:
        return None  # train is not improving either: not overfitting
    remedies = [{"change": {"max_steps": int(best_step)}, "why": f"stop where eval was best (step {best_step:g})"},
                lower_lr(ctx, 2, "slower fitting of the training pairs")]
    if ctx.method == "dpo":
        remedies.append({"change": {"beta": sig(min(ctx.beta * 2, 1.0))}, "why": "stay closer to the reference"})
    last = (es or ls)[-1]
    return finding(ctx, "eval_divergence", [best_step, last], ev,
                   "Overfitting the training pairs: " + "; ".join(why) + " while the training margin kept "
                   "improving.", remedies)


def _running_median(vals: list[float], i: int, window: int) -> float:
    """Median of the ``window`` values before index ``i``."""
    return median(vals[max(0, i - window):i])


def grad_spike(ctx: Ctx):
    t = ctx.th("grad_spike")
    steps, g = ctx.finite("grad_norm")
    if len(g) <= t["min_history"]:
        return None
    spikes, hard, worst = [], [], 0.0
    # median ≥ min, so a value at most ratio × the smallest positive norm cannot be a spike: skip the sort
    positive = [v for v in g if v > 0]
    floor = t["ratio"] * min(positive) if positive else 0.0
    loss_at = None
    for i in range(t["min_history"], len(g)):
        v = g[i]
        if v <= floor:
            continue
        med = _running_median(g, i, t["window"])
        if med > 0 and v > t["ratio"] * med:
            worst = max(worst, v / med)
            if loss_at is None:
                ls, lv = ctx.finite("loss")
                loss_at = {s: (j, lv) for j, s in enumerate(ls)}
            # A batch whose own loss is far above the usual one (a hard batch once most pairs are learned: the
            # sigmoid loss and its gradient both grow with the batch's negative margin) explains its spike.
            j, lv = loss_at.get(steps[i], (None, None))
            lmed = _running_median(lv, j, t["window"]) if j else 0.0
            if j and lmed > 0 and lv[j] >= t["batch_loss_ratio"] * lmed:
                hard.append(steps[i])
            else:
                spikes.append(steps[i])
    if not spikes and not hard:
        return None
    every = sorted(spikes + hard)
    severity = "warning" if len(spikes) >= t["repeated"] else "info"
    remedies = [lower_lr(ctx, 2, "smaller steps make spikes rarer"),
                {"change": {"warmup_steps": 0.1}, "why": "a longer warm-up avoids early spikes"}]
    mgn = ctx.cfg.get("max_grad_norm", 1.0)
    if not isinstance(mgn, (int, float)) or mgn <= 0 or mgn > 1.0:
        remedies.insert(0, {"change": {"max_grad_norm": 1.0}, "why": "clip gradients to bound each update"})
    explained = (f" {len(hard)} of them came with a batch loss at least {t['batch_loss_ratio']:g}× its running "
                 "median: hard batches among pairs the model already ranks right, not instability; a larger "
                 "batch smooths them." if hard else "")
    if hard and not spikes:
        remedies = [{"change": {"gradient_accumulation_steps": 4}, "why": "average more pairs per update"}]
    return finding(ctx, "grad_spike", [every[0], every[-1]],
                   {"spikes": len(every), "hard_batch_spikes": len(hard), "worst_ratio_to_median": worst,
                    "spike_steps": every[:10]},
                   f"grad_norm jumped above {t['ratio']:g}× its running median {len(every)} time(s) (worst "
                   f"{worst:.1f}×).{explained} Isolated spikes are survivable with clipping; repeated ones without "
                   "a hard batch to explain them precede divergence.",
                   remedies, severity=severity)


def simpo_margin_below_target(ctx: Ctx):
    if ctx.method != "simpo" or "no_learning" in ctx.found:
        return None
    t = ctx.th("simpo_margin_below_target")
    gamma = ctx.cfg.get("simpo_gamma")
    if not isinstance(gamma, (int, float)) or gamma <= 0:
        return None
    steps, marg = ctx.finite("rewards/margins")
    if len(marg) < t["min_points"]:
        return None
    tail = marg[int(len(marg) * (1 - t["last_fraction"])):]
    m = mean(tail)
    if m >= gamma:
        return None
    beta = ctx.beta
    remedies = [{"change": {"learning_rate": sig(ctx.lr * 2)}, "why": "the usual cause: too small a step"},
                {"change": {"simpo_gamma": sig(0.3 * beta)}, "why": "γ/β = 0.3 asks for a smaller gap"}]
    if beta < 1:
        remedies.append({"change": {"beta": 2.0, "simpo_gamma": 1.0}, "why": "β below 1 is a DPO value; SimPO uses 2-2.5"})
    return finding(ctx, "simpo_margin_below_target", [steps[len(steps) - len(tail)], steps[-1]],
                   {"mean_margin_last_half": m, "simpo_gamma": float(gamma)},
                   f"The SimPO margin averages {m:.3g} over the last half, below the target γ = {gamma:g}: the "
                   "model does not separate pairs by the requested gap.", remedies)


def lr_too_high(ctx: Ctx):
    t = ctx.th("lr_too_high")
    steps, loss = ctx.post("loss")
    if len(loss) < t["min_points"]:
        return None
    _, all_loss = ctx.finite("loss")
    start = mean(all_loss[:ctx.edge(len(all_loss))])
    d = [b - a for a, b in zip(loss, loss[1:]) if b != a]
    rev = sum(1 for a, b in zip(d, d[1:]) if (a > 0) != (b > 0)) / max(len(d) - 1, 1)
    half = len(loss) // 2
    first, second = loss[:half], loss[half:]
    s1, s2 = pstdev(first), pstdev(second)
    oscillating = (rev > t["reversal_share"] and s2 > t["spread_growth"] * max(s1, 1e-12)
                   and s2 > t["min_spread_of_start"] * abs(start))
    q = loss[-max(1, len(loss) // 4):]
    rising = start > 0 and mean(q) > t["loss_over_start"] * start
    if not (oscillating or rising):
        return None
    why = []
    if oscillating:
        why.append(f"the loss reverses direction at {rev:.0%} of steps and its spread grew from {s1:.3g} to {s2:.3g}")
    if rising:
        why.append(f"the last quarter's loss {mean(q):.3g} is above {t['loss_over_start']:g}× the start {start:.3g}")
    return finding(ctx, "lr_too_high", [steps[half], steps[-1]],
                   {"reversal_share": rev, "spread_first_half": s1, "spread_second_half": s2,
                    "loss_start": start, "loss_last_quarter": mean(q)},
                   "Unstable optimisation: " + "; ".join(why) + ".",
                   [lower_lr(ctx, 2, "halve the step (or more)"),
                    {"change": {"warmup_steps": 0.1}, "why": "warm up over the first 10% of steps"}])


def too_few_points(ctx: Ctx):
    t = ctx.th("too_few_points")
    n = len(ctx.hist.train)
    if n >= t["min_points"] or ctx.found:
        return None
    last = ctx.hist.train[-1]["step"] if n else None
    return finding(ctx, "too_few_points", [ctx.hist.train[0]["step"], last] if n else None, {"logged_points": n},
                   f"Only {n} logged training point(s): trend rules need at least {t['min_points']}. Log more "
                   "often (logging_steps) or diagnose again later.", [])


# Order matters: later rules consult earlier findings (ctx.found) to avoid double reports.
CATALOGUE = {f.__name__: f for f in (nan_loss, no_learning, chance_accuracy, negative_margin, margin_explosion,
                                     likelihood_displacement, eval_divergence, grad_spike,
                                     simpo_margin_below_target, lr_too_high, too_few_points)}
