"""Trend rules: findings that need a run of logged points (each rule states its minimum)."""
from __future__ import annotations

from statistics import median

from . import Ctx, finding, mean, plumbing, pstdev, remedy, scale_lr, sig


def _broken(ctx: Ctx) -> bool:
    """A NaN or a plumbing finding explains a flat or odd curve better than any trend would."""
    return plumbing(ctx) or "nan_loss" in ctx.found or "nonfinite_metrics" in ctx.found


def _frozen_eval(ctx: Ctx, t: dict):
    """(steps, evidence) when the held-out numbers do not move across several evaluations: the same pairs scored
    by weights that have not changed. Scale-free, so it holds for every method; None otherwise."""
    es, el = ctx.finite("loss", "eval")
    if len(el) < t["frozen_eval_points"] or el[0] <= 0:
        return None
    share = max(abs(v - el[0]) for v in el) / el[0]
    if share > t["frozen_eval_loss_share"]:
        return None
    ev = {"eval_points": len(el), "eval_loss_first": el[0], "eval_loss_max_relative_change": share}
    _, acc = ctx.finite("rewards/accuracies", "eval")
    if len(acc) >= 2:
        if max(acc) - min(acc) > t["frozen_eval_accuracy_range"]:
            return None
        ev["eval_accuracy_range"] = max(acc) - min(acc)
    _, m = ctx.finite("rewards/margins", "eval")
    if len(m) >= 2:
        if max(abs(v - m[0]) for v in m) > max(t["frozen_eval_margin_share"] * abs(m[0]), t["frozen_eval_margin_abs"]):
            return None
        ev["eval_margin_first"], ev["eval_margin_last"] = m[0], m[-1]
    return es, ev


def no_learning(ctx: Ctx):
    if _broken(ctx):
        return None
    t = ctx.th("no_learning")
    frozen = _frozen_eval(ctx, t)
    if frozen is not None:
        steps, ev = frozen
        _, lr = ctx.finite("learning_rate", "train")
        zero_lr = bool(lr) and sum(1 for v in lr if v == 0.0) / len(lr) > 0.5
        if zero_lr:
            ev["share_learning_rate_zero"] = sum(1 for v in lr if v == 0.0) / len(lr)
        return finding(ctx, "no_learning", [steps[0], steps[-1]], ev,
                       f"The held-out loss stays within {ev['eval_loss_max_relative_change']:.2%} of its first value "
                       f"over {ev['eval_points']} evaluations" + (", with the same accuracy" if "eval_accuracy_range" in ev
                                                                  else "")
                       + ": the same pairs scored by weights that have not changed. "
                       + ("The logged learning rate is exactly 0 at most steps: nothing is updated. " if zero_lr else "")
                       + "Check that the trainable parameters really receive the update (frozen or detached modules, "
                       "an adapter on nothing, a learning rate of 0 or far too small).",
                       [scale_lr(ctx, 5, "if the rate is merely tiny, a larger step moves the weights")])
    if ctx.method not in ("dpo", "simpo", "cpo"):
        # the paths below are on DPO's and SimPO's scales; what holds for any method is a loss that does not move at
        # all: batch-to-batch noise moves every real loss, so a frozen one means nothing is computed or updated
        ls, loss = ctx.post("loss")
        if len(loss) < t["min_points"] or not loss[0]:
            return None
        share = (max(loss) - min(loss)) / abs(loss[0])
        if share > t["frozen_train_loss_share"]:
            return None
        return finding(ctx, "no_learning", [ls[0], ls[-1]], {"loss_first": loss[0], "loss_relative_range": share},
                       f"The training loss is frozen at {loss[0]:.4g} over {len(loss)} logged points past warm-up "
                       f"(range {share:.2%} of its value): even batch-to-batch noise would move a loss that is being "
                       "computed on changing weights. Check that the trainable parameters receive the update.",
                       [scale_lr(ctx, 5, "if the rate is merely tiny, a larger step moves the weights")])
    ls, loss = ctx.post("loss")
    ms, marg = ctx.post("rewards/margins")
    _, epochs = ctx.finite("epoch")
    many_epochs = bool(epochs) and max(epochs) - min(epochs) >= t["flat_epochs"]
    # points that each sum up many steps (per-epoch or every-100-steps logs) over several passes: fewer will do
    enough = t["flat_min_points"] if many_epochs else t["min_points"]
    if len(loss) < enough and len(marg) < enough:
        return None
    _, rc = ctx.finite("rewards/chosen")
    if rc and all(v == 0.0 for v in rc):
        return None  # rewards never move: the reference is the policy (reference_tracks_policy), not a slow step
    ev = {}
    # many passes over a small set and still at the start, at low accuracy: no learning, whatever the margins do,
    # even when the loss creeps down (within flat_loss_share after flat_epochs passes is not a usable run)
    flat = len(loss) >= enough and many_epochs and _flat_over_epochs(ctx, t, loss, ev)
    if not flat and (_slowly_learning(ctx, t, loss) or _separates(ctx)):
        return None  # a small but steady fall of the loss (and rise of accuracy) is a slow run, not a stuck one
    if flat:
        pass
    elif len(loss) >= t["min_points"]:
        _, all_loss = ctx.finite("loss")
        start = all_loss[0]
        dev = max(abs(v - start) for v in loss)
        if dev > t["loss_tolerance"]:
            return None
        ev.update(loss_start=start, loss_max_deviation=dev)
    if "flat_epochs" not in ev and len(marg) >= t["min_points"]:
        _, all_m = ctx.finite("rewards/margins")
        dev = max(abs(v - all_m[0]) for v in marg)
        if dev > t["margin_tolerance"]:
            return None
        ev.update(margin_start=all_m[0], margin_max_deviation=dev)
    steps = ls or ms
    remedies = [scale_lr(ctx, 5, "the most common cause: the step is too small to move the log-ratios")]
    if ctx.cfg.get("use_peft") and not ctx.cfg.get("lora_target_modules"):
        remedies.append(remedy(ctx, {"lora_target_modules": "all-linear"}, "LoRA without target modules may train "
                                                                           "nothing"))
    if "margin_max_nats" in ev:
        return finding(ctx, "no_learning", [steps[0], steps[-1]], ev,
                       f"Over {ev['flat_epochs']:g} epochs no logged margin exceeds {ev['margin_max_nats']:.2g} nats "
                       "(margin / β)" + (f" and accuracy averages {ev['mean_accuracy']:.2f}" if "mean_accuracy" in ev
                                        else "") + ": the model has seen every pair several times and still does not "
                       "separate them (the loss column moves, but on another scale: a loss summed over accumulation "
                       "steps reads 4 × ln 2 where the mean is ln 2). Too small a learning rate or too few pairs.",
                       remedies)
    if "flat_epochs" in ev:
        return finding(ctx, "no_learning", [steps[0], steps[-1]], ev,
                       f"Over {ev['flat_epochs']:g} epochs the loss stays within {ev['loss_max_relative_change']:.0%} "
                       f"of its start ({ev['loss_start']:.3g})" + (f" and accuracy averages {ev['mean_accuracy']:.2f}"
                                                                   if "mean_accuracy" in ev else "")
                       + ": the model has seen every pair several times and still does not separate them. With a "
                       "small dataset, too small a learning rate (or LoRA on too few modules) leaves DPO at its "
                       "start; check too that chosen and rejected really differ.", remedies)
    return finding(ctx, "no_learning", [steps[0], steps[-1]], ev,
                   f"Loss and margins stay at their start values for {len(steps)} logged points past warm-up while "
                   "the rewards move: the policy shifts but does not separate chosen from rejected. Check the "
                   "learning rate, that chosen differs from rejected in the data, and that the reference is not "
                   "synced to the policy every step.", remedies)


def _thirds_shift(values: list[float]) -> tuple[float, float]:
    """(mean of the last third − mean of the first third, that difference in standard errors). Noise moves a
    stuck curve both ways; a learning one keeps its direction, which a long noisy log shows as a large z."""
    k = len(values) // 3
    if k < 1:
        return 0.0, 0.0
    a, b = values[:k], values[-k:]
    d = mean(b) - mean(a)
    se = ((pstdev(a) ** 2 + pstdev(b) ** 2) / k) ** 0.5
    return d, (d / se if se > 0 else (float("inf") if d > 0 else float("-inf") if d < 0 else 0.0))


def _slowly_learning(ctx: Ctx, t: dict, loss: list[float]) -> bool:
    """The loss falls by at least ``trend_min_drop`` with a z of ``trend_z`` or more, and the accuracy (when
    logged) does not fall: DPO at a small learning rate moves this slowly while it learns."""
    if len(loss) < t["min_points"]:
        return False
    d, z = _thirds_shift(loss)
    if -d < t["trend_min_drop"] or -z < t["trend_z"]:
        return False
    _, acc = ctx.post("rewards/accuracies")
    return len(acc) < 3 or _thirds_shift(acc)[0] > 0


def _separates(ctx: Ctx) -> bool:
    """DPO-family accuracies are against the reference (all ties at the start): a mean past warm-up above
    chance_accuracy's upper edge means the policy has moved the right way, whatever the loss did since."""
    _, acc = ctx.post("rewards/accuracies")
    return len(acc) >= 3 and ctx.method != "unknown" and mean(acc) > ctx.th("chance_accuracy")["high"]


def _flat_over_epochs(ctx: Ctx, t: dict, loss: list[float], ev: dict) -> bool:
    """A small dataset trained for several epochs whose loss stays within a few percent of its start and whose
    accuracy stays near chance (each point may be an epoch average, so the margins' noise does not count)."""
    _, epochs = ctx.finite("epoch")
    _, all_loss = ctx.finite("loss")
    _, acc = ctx.post("rewards/accuracies")
    if not epochs or max(epochs) - min(epochs) < t["flat_epochs"] or not all_loss or all_loss[0] <= 0:
        return False
    if acc and mean(acc) > t["flat_accuracy_below"]:
        return False
    share = max(abs(v - all_loss[0]) for v in loss) / all_loss[0]
    if share > t["flat_loss_share"]:
        # the loss may be logged on another scale (summed over accumulation steps: 4 x ln 2 on full batches, ln 2
        # on a short last one), so its jumps do not say the model moved; the margins do, in nats (margin / beta)
        if ctx.method != "dpo":
            return False
        _, marg = ctx.post("rewards/margins")
        beta = ctx.beta[0]
        if len(marg) < t["min_points"] or max(abs(v) for v in marg) / beta > t["flat_margin_nats"]:
            return False
        ev.update(margin_max_nats=max(abs(v) for v in marg) / beta, flat_epochs=max(epochs) - min(epochs))
        if acc:
            ev["mean_accuracy"] = mean(acc)
        return True
    ev.update(loss_start=all_loss[0], loss_max_relative_change=share, flat_epochs=max(epochs) - min(epochs))
    if acc:
        ev["mean_accuracy"] = mean(acc)
    return True


def _past_warmup(ctx: Ctx, rule: str, key: str):
    """(thresholds, steps, values past warm-up) for a rule that reads ``key``, or None when a flat curve or a
    broken run already explains it, or there are too few points."""
    if "no_learning" in ctx.found or _broken(ctx):
        return None
    t = ctx.th(rule)
    steps, values = ctx.post(key)
    return (t, steps, values) if len(values) >= t["min_points"] else None


def _robust_remedy(ctx: Ctx, smoothing: float, why: str) -> list:
    """Robust DPO (Chowdhury et al. 2024) as a remedy for flipped labels; DPOTrainer only."""
    return [remedy(ctx, {"loss_type": ["robust"], "label_smoothing": smoothing}, why)] if ctx.method == "dpo" else []


def chance_accuracy(ctx: Ctx):
    got = _past_warmup(ctx, "chance_accuracy", "rewards/accuracies")
    if got is None:
        return None
    t, steps, acc = got
    tail = acc[-max(1, len(acc) // 3):]
    m, mt = mean(acc), mean(tail)
    _, marg = ctx.post("rewards/margins")
    # below chance with margins that are not clearly negative (negative_margin's case): still "cannot tell them apart"
    below = m < t["low"] and mt <= t["high"] and (not marg or mean(marg) > 0)
    if not (t["low"] <= m <= t["high"] and t["low"] <= mt <= t["high"]) and not below:
        return None
    remedies = [scale_lr(ctx, 3, "too small a step leaves pairs unseparated")]
    remedies += _robust_remedy(ctx, 0.1, "robust DPO tolerates a share of flipped labels (Chowdhury et al. 2024)")
    return finding(ctx, "chance_accuracy", [steps[0], steps[-1]], {"mean_accuracy": m, "last_third_accuracy": mt},
                   f"Preference accuracy averages {m:.2f} past warm-up ({mt:.2f} over the last third): the model "
                   "cannot tell chosen from rejected. Noisy labels, too little signal per pair, or too small a "
                   "learning rate.", remedies)


def _margin_floor(ctx: Ctx, t: dict) -> float:
    """How far below zero the mean margin must be, on the method's own scale."""
    if ctx.method in ("orpo", "simpo"):  # rewards are β × mean per-token log-probs: tiny numbers for ORPO's β 0.1
        return ctx.beta[0] * t["per_token_gap_below"]
    if ctx.method == "unknown":
        return 0.0  # the scale is unknown: the sign and the accuracy must both say it
    return t["mean_margin_below"]


def negative_margin(ctx: Ctx):
    got = _past_warmup(ctx, "negative_margin", "rewards/margins")
    if got is None:
        return None
    t, steps, marg = got
    neg = sum(1 for v in marg if v < 0) / len(marg)
    m = mean(marg)
    _, acc = ctx.post("rewards/accuracies")
    acc_m = mean(acc) if acc else None
    zero_acc = sum(1 for v in acc if v == 0.0) / len(acc) if acc else 0.0
    floor = _margin_floor(ctx, t)
    low_acc = acc_m is not None and acc_m < t["accuracy_below"]
    if ctx.method == "unknown":
        fires = m < floor and neg >= t["negative_fraction"] and (acc_m is None or acc_m < 0.5)
    else:
        fires = m <= floor and (neg >= t["negative_fraction"] or low_acc)
    # accuracy exactly 0 at most points: every pair ranked the wrong way, whatever the margins' scale
    fires = fires or (m < 0 and zero_acc >= t["zero_accuracy_share"])
    if not fires:
        return None
    remedies = [remedy(ctx, {}, "check the data: are chosen and rejected swapped (a column mapping, a "
                                "preference label read backwards)?")]
    remedies += _robust_remedy(ctx, 0.2, "if only part of the labels is flipped, robust DPO discounts them")
    ev = {"share_negative": neg, "mean_margin": m, "margin_threshold": floor}
    if acc_m is not None:
        ev.update(mean_accuracy=acc_m, share_accuracy_zero=zero_acc)
    return finding(ctx, "negative_margin", [steps[0], steps[-1]], ev,
                   f"Margins are below zero at {neg:.0%} of the logged points past warm-up (mean {m:.3g})"
                   + (f" and accuracy is exactly 0 at {zero_acc:.0%} of them" if zero_acc else "")
                   + ": the model is learning to prefer the rejected answers. Usually swapped labels.", remedies)


def _edges(ctx: Ctx, key: str):
    steps, v = ctx.finite(key)
    if len(v) < 4:
        return None
    k = ctx.edge(len(v))
    return steps, mean(v[:k]), mean(v[-k:])


def _logp_drops(ctx: Ctx):
    """(steps, chosen start, chosen end, rejected start, rejected end) of the log-probs, or None."""
    c, r = _edges(ctx, "logps/chosen"), _edges(ctx, "logps/rejected")
    if c is None or r is None:
        return None
    return c[0], c[1], c[2], r[1], r[2]


def degeneration(ctx: Ctx):
    t = ctx.th("degeneration")
    why, ev, steps = [], {}, None
    e = _edges(ctx, "entropy")
    if e and e[1] > 0 and e[2] < t["entropy_share"] * e[1]:
        why.append(f"the mean token entropy fell from {e[1]:.3g} to {e[2]:.3g}")
        ev.update(entropy_start=e[1], entropy_end=e[2])
        steps = e[0]
    d = _logp_drops(ctx)
    if d:
        s, c0, c1, r0, r1 = d
        dc, dr = c0 - c1, r0 - r1
        if c0 < 0 and dc > 0 and dr > 0 and dc >= t["together_share"] * dr and c1 <= (1 + t["collapse_share"]) * c0:
            why.append(f"chosen and rejected log-probs fall together (chosen {c0:.3g} → {c1:.3g}, rejected "
                       f"{r0:.3g} → {r1:.3g}): both answers lose most of their probability")
            ev.update(chosen_logp_start=c0, chosen_logp_end=c1, rejected_logp_start=r0, rejected_logp_end=r1)
            steps = steps or s
    if not why:
        return None
    remedies = [scale_lr(ctx, 0.5, "slower updates keep the distribution from collapsing")]
    if ctx.method == "dpo":
        remedies.insert(0, remedy(ctx, {"loss_type": ["sigmoid", "sft"]},
                                  "an SFT term on chosen keeps its likelihood up (RPO; Pang et al. 2024)"))
    elif ctx.method == "simpo":
        remedies.insert(0, remedy(ctx, {"cpo_alpha": 0.1}, "a small SFT term on chosen (the SimPO README's fix)"))
    return finding(ctx, "degeneration", [steps[0], steps[-1]], ev,
                   "The model is degenerating: " + "; ".join(why) + ". Generations turn repetitive or off-topic "
                   "(probability moves to sequences in neither set) even when the margin and accuracy look good.",
                   remedies)


def _levelled(marg: list[float], ctx: Ctx, t: dict) -> bool:
    """The margin's last points are less than ``growth_since_half`` times their half-way value."""
    n = len(marg)
    if n < t["min_points"]:
        return False
    k = ctx.edge(n)
    half = mean(marg[n // 2 - k // 2: n // 2 - k // 2 + k])
    return half > 0 and mean(marg[-k:]) < t["growth_since_half"] * half


def _sigmoid_loss(ctx: Ctx) -> bool:
    """The run's DPO loss is TRL's default sigmoid one (no config or code names another)."""
    named = ctx.cfg.get("loss_type") or ctx.hist.info.get("hints", {}).get("loss_type")
    named = named if isinstance(named, (list, tuple, set)) else [named] if named else []
    return all(n == "sigmoid" for n in named)


def margin_explosion(ctx: Ctx):
    t = ctx.th("margin_explosion")
    steps, marg = ctx.finite("rewards/margins")
    beta, beta_src = ctx.beta
    # A margin is β × a log-ratio: compare the log-ratio (per token for SimPO) with the limit, not the raw margin.
    scaled = ctx.method in ("dpo", "simpo")
    limit = t["simpo_nats_per_token"] if ctx.method == "simpo" else t["dpo_nats"]
    unit = "nats per token" if ctx.method == "simpo" else "nats"
    n = len(marg)
    ev, why, first_step, severity = {}, [], None, None
    if scaled and n >= t["min_points"]:
        k = ctx.edge(n)
        last, half = mean(marg[-k:]), mean(marg[n // 2 - k // 2: n // 2 - k // 2 + k])
        if last / beta > limit and last > t["growth_since_half"] * max(half, 1e-9):
            ev.update(last_margin=last, half_way_margin=half, margin_over_beta=last / beta, limit=limit)
            why.append(f"the margin reached {last:.3g} ({last / beta:.3g} {unit} at β = {beta:g}, over {limit:g}) "
                       f"and grew {last / max(half, 1e-9):.1f}× since half-way")
            first_step = steps[n // 2]
    if scaled and ctx.method == "dpo" and not why:
        # one row is enough when the policy sits absurdly far from the reference with a zero loss
        rows = [r for r in ctx.rows if r.get("rewards/margins", 0.0) / beta > limit
                and r.get("loss", 1.0) <= 0.01] if marg and max(marg) / beta > limit else []
        if rows:
            r = max(rows, key=lambda r: r["rewards/margins"])
            ev.update(max_margin=r["rewards/margins"], margin_over_beta=r["rewards/margins"] / beta, limit=limit)
            why.append(f"at step {r['step']:g} the margin is {r['rewards/margins']:.3g} ({r['rewards/margins'] / beta:.3g}"
                       f" nats at β = {beta:g}, {beta_src}) with a loss of {r['loss']:.3g}")
            first_step = r["step"]
    ps, loss = ctx.post("loss")
    _, pacc = ctx.post("rewards/accuracies")
    implied = not pacc and ctx.method == "dpo" and _sigmoid_loss(ctx)
    if implied:
        # no accuracy logged: a misranked pair costs sigmoid DPO at least ln 2, so a batch loss below
        # saturated_loss already means ≥ 1 - saturated_loss/ln 2 (93%) of its pairs are ranked right
        pacc = [1.0] * len(loss)
    if len(loss) >= t["min_points"] and len(pacc) == len(loss) and min(loss) < t["saturated_loss"]:
        sat = [s for s, lv, a in zip(ps, loss, pacc) if lv < t["saturated_loss"] and a >= t["saturated_accuracy"]]
        if len(sat) >= t["saturated_share"] * len(loss):
            ev.update(saturated_points=len(sat), post_warmup_points=len(loss))
            _, ep = ctx.finite("epoch", "train")
            fresh = bool(ep) and max(ep) <= t["one_epoch"] and not why and _levelled(marg, ctx, t)
            if fresh:
                # within the first pass each batch is new data: a saturated loss there is an easy preference the
                # model generalises, not memorised pairs; the risk left is over-optimisation, seen in generations
                severity = "info"
                ev["max_epoch"] = max(ep)
                why.append(f"the loss is below {t['saturated_loss']:g} with accuracy ≥ {t['saturated_accuracy']:g} at "
                           f"{len(sat)} of {len(loss)} points within the first epoch, with the margin levelled off: "
                           "pairs the model had not seen yet are ranked right, so the preference is easy for it; "
                           "check its generations (`prefpilot eval`) for over-optimisation")
            elif implied:
                ev["accuracy"] = "not logged (implied by the sigmoid loss)"
                why.append(f"the loss is below {t['saturated_loss']:g} at {len(sat)} of {len(loss)} points past "
                           f"warm-up (no accuracy is logged; a sigmoid DPO loss that low means nearly every pair "
                           f"is ranked right by a wide margin): the training pairs are memorised")
            else:
                why.append(f"the loss is below {t['saturated_loss']:g} with accuracy ≥ {t['saturated_accuracy']:g} at "
                           f"{len(sat)} of {len(loss)} points past warm-up: the training pairs are memorised")
            first_step = sat[0] if first_step is None else min(first_step, sat[0])
    asteps, acc = ctx.finite("rewards/accuracies")
    if not why and len(acc) >= t["min_points"]:
        cut = int(t["pinned_before_fraction"] * len(acc))
        ones = [0] * (len(acc) + 1)  # ones[j] = count of 1.0 in acc[j:]
        for j in range(len(acc) - 1, -1, -1):
            ones[j] = ones[j + 1] + (acc[j] >= 0.999)
        for i in range(0, max(cut, 1)):
            share = ones[i] / (len(acc) - i)
            if acc[i] >= 0.999 and share >= t["pinned_share"]:
                ev.update(pinned_from_step=asteps[i], share_at_1=round(share, 3))
                first_step = asteps[i]
                growth = None
                if n >= t["min_points"]:
                    k = ctx.edge(n)
                    half = mean(marg[n // 2 - k // 2: n // 2 - k // 2 + k])
                    growth = mean(marg[-k:]) / half if half > 0 else None
                    ev["margin_growth_since_half"] = growth
                tail_loss = loss[-max(1, len(loss) // 4):] if loss else []
                near_zero = bool(tail_loss) and min(tail_loss) < t["pinned_loss_below"]
                if tail_loss:
                    ev["last_quarter_min_loss"] = min(tail_loss)
                if growth is None or growth < t["pinned_margin_growth"] or (tail_loss and not near_zero):
                    # saturated, not running away (the loss has not reached 0): the pairs are easy for this model
                    severity = "info"
                    why.append(f"accuracy is 1.0 from step {asteps[i]:g} on, but the margin has levelled off "
                               "(the pairs are easy for this model; watch held-out metrics)")
                else:
                    why.append(f"accuracy is pinned at 1.0 from step {asteps[i]:g} (within the first "
                               f"{t['pinned_before_fraction']:.0%} of the run) while the margin keeps growing")
                break
    if not why:
        return None
    remedies = [scale_lr(ctx, 1 / 3, "slower updates stop the margin running away")]
    if ctx.method == "dpo":
        remedies.insert(0, remedy(ctx, {"beta": sig(min(beta * 3, 1.0))},
                                  "a larger β keeps the policy closer to the reference"))
        remedies.append(remedy(ctx, {"loss_type": ["ipo"]},
                               "IPO regresses to a target margin instead of pushing it to infinity (Azar et al. 2023)"))
    else:
        remedies.append(remedy(ctx, {"num_train_epochs": 1}, "one pass over the pairs overfits less"))
    last_step = (steps or asteps or ps)[-1]
    if severity == "info":
        return finding(ctx, "margin_explosion", [first_step, last_step], ev, "Saturated: " + why[0] + ".",
                       remedies, severity="info")
    return finding(ctx, "margin_explosion", [first_step, last_step], ev,
                   "Overfitting: " + "; ".join(why) + ". With sigmoid DPO the loss can approach 0 by pushing "
                   "rejected log-probs down without limit.", remedies)


def likelihood_displacement(ctx: Ctx):
    t = ctx.th("likelihood_displacement")
    beta, _ = ctx.beta
    rc, rr = _edges(ctx, "rewards/chosen"), _edges(ctx, "rewards/rejected")
    if ctx.method == "dpo" and rc and rr:
        # DPO rewards are β·log π/π_ref per pair: ÷β gives how far each answer fell below the reference, in nats
        cs, c0, c1 = rc[0], rc[1] / beta, rc[2] / beta
        r0, r1 = rr[1] / beta, rr[2] / beta
        basis, start_level = "log-ratio to the reference", 0.0
    else:
        d = _logp_drops(ctx)
        if d is None:
            return None
        cs, c0, c1, r0, r1 = d
        basis, start_level = "log-prob", abs(c0)
    dc, dr = c0 - c1, r0 - r1
    nats = t["simpo_nats_per_token"] if ctx.method == "simpo" else t["dpo_nats"]
    if not (dc > nats and dc > t["relative_drop"] * start_level and dr > 0):
        return None
    _, marg = ctx.finite("rewards/margins")
    if len(marg) >= 4:
        km = ctx.edge(len(marg))
        if mean(marg[-km:]) <= mean(marg[:km]):
            return None  # margins not rising: a different problem (see the other findings)
    near = dc >= t["near_share"] * dr
    if ctx.method == "dpo":
        remedies = [remedy(ctx, {"loss_type": ["sigmoid", "sft"]},
                           "an SFT term on chosen keeps its likelihood up (RPO; Pang et al. 2024)"),
                    scale_lr(ctx, 0.5, "slower updates displace less mass"),
                    remedy(ctx, {"loss_type": ["apo_zero"]},
                           "APO-zero raises chosen likelihood explicitly (D'Oosterlinck et al. 2024)")]
    else:
        remedies = [remedy(ctx, {"cpo_alpha": 0.1}, "a small SFT term on chosen (the SimPO README's fix)"),
                    scale_lr(ctx, 0.5, "slower updates displace less mass")]
    ev = {"basis": basis, "chosen_start": c0, "chosen_end": c1, "rejected_start": r0, "rejected_end": r1,
          "chosen_drop_share_of_rejected": dc / dr}
    if near:
        return finding(ctx, "likelihood_displacement", [cs[0], cs[-1]], ev,
                       f"Chosen ({basis}) fell from {c0:.3g} to {c1:.3g}, nearly as fast as rejected ({r0:.3g} → "
                       f"{r1:.3g}): the margin grows because both lose probability, which moves to answers in "
                       "neither set (Razin et al. 2024). Generations can degrade even though the margin looks good.",
                       remedies)
    return finding(ctx, "likelihood_displacement", [cs[0], cs[-1]], ev,
                   f"Chosen ({basis}) fell from {c0:.3g} to {c1:.3g} while rejected fell about "
                   f"{dr / max(dc, 1e-12):.1f}× as far ({r0:.3g} → {r1:.3g}). This is the usual DPO regime "
                   "(published healthy runs show it); it becomes a problem when chosen falls nearly as fast as "
                   "rejected or the entropy collapses.", remedies, severity="info")


def eval_divergence(ctx: Ctx):
    t = ctx.th("eval_divergence")
    why, ev = [], {}
    best_step = None
    es, em = ctx.finite("rewards/margins", "eval")
    _, eacc = ctx.finite("rewards/accuracies", "eval")
    if eacc and max(eacc) < t["separated_accuracy"]:
        em = []  # held-out pairs were never separated: a margin wandering around 0 is noise, not a best to fall from
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
    ts, tm = ctx.finite("rewards/margins", "train")
    tl_s, tl = ctx.finite("loss", "train")
    after = [v for s, v in zip(ts, tm) if s >= best_step]
    lafter = [v for s, v in zip(tl_s, tl) if s >= best_step]
    rising = (len(after) >= 2 and after[-1] > after[0]) or (len(lafter) >= 2 and lafter[-1] < lafter[0])
    if not tm:  # only held-out rewards (a model card): a margin still growing after the best eval loss is the sign
        eafter = [v for s, v in zip(es, em) if s >= best_step]
        rising = rising or (len(eafter) >= 2 and eafter[-1] > eafter[0])
    if not rising:
        return None  # train is not improving either: not overfitting
    remedies = [remedy(ctx, {"max_steps": int(best_step)}, f"stop where eval was best (step {best_step:g})"),
                scale_lr(ctx, 0.5, "slower fitting of the training pairs")]
    if ctx.method == "dpo":
        remedies.append(remedy(ctx, {"beta": sig(min(ctx.beta[0] * 2, 1.0))}, "stay closer to the reference"))
    last = (es or ls)[-1]
    return finding(ctx, "eval_divergence", [best_step, last], ev,
                   "Overfitting the training pairs: " + "; ".join(why) + " while the " + ("training" if tm else "held-out")
                   + " margin kept growing (more epochs than the data supports, or too high a learning rate).", remedies)


def _running_median(vals: list[float], i: int, window: int) -> float:
    """Median of the ``window`` values before index ``i``."""
    return median(vals[max(0, i - window):i])


def grad_spike(ctx: Ctx):
    t = ctx.th("grad_spike")
    steps, g = ctx.finite("grad_norm", "train")
    if len(g) <= t["min_history"]:
        return None
    spikes, hard, worst, extreme, harmful = [], [], 0.0, 0, 0
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
                ls, lv = ctx.finite("loss", "train")
                loss_at = {s: (j, lv) for j, s in enumerate(ls)}
            j, lv = loss_at.get(steps[i], (None, None))
            if v / med >= t["extreme_ratio"]:
                # no batch of a bounded loss explains a jump of orders of magnitude: overflow or divergence
                extreme += 1
                spikes.append(steps[i])
                continue
            # A batch whose own loss is far above the usual one (a hard batch once most pairs are learned: the
            # sigmoid loss and its gradient both grow with the batch's negative margin) explains its spike.
            lmed = _running_median(lv, j, t["window"]) if j else 0.0
            if j and lmed > 0 and lv[j] >= t["batch_loss_ratio"] * lmed:
                hard.append(steps[i])
            else:
                spikes.append(steps[i])
                harmful += bool(j and _loss_rises_after(lv, j, t))
    if not spikes and not hard:
        return None
    every = sorted(spikes + hard)
    # grad_norm is the last step's value, not a window mean: with logging every step each spike is seen, so a
    # count alone over-warns a long log; repeated spikes warn when the loss did worse after one of them
    severity = "warning" if extreme or (len(spikes) >= t["repeated"] and harmful) else "info"
    remedies = [scale_lr(ctx, 0.5, "smaller steps make spikes rarer"),
                remedy(ctx, {"warmup_steps": 0.1}, "a longer warm-up avoids early spikes")]
    mgn = ctx.cfg.get("max_grad_norm", 1.0)
    if not isinstance(mgn, (int, float)) or mgn <= 0 or mgn > 1.0:
        remedies.insert(0, remedy(ctx, {"max_grad_norm": 1.0}, "clip gradients to bound each update"))
    explained = (f" {len(hard)} of them came with a batch loss at least {t['batch_loss_ratio']:g}× its running "
                 "median: hard batches among pairs the model already ranks right, not instability; a larger "
                 "batch smooths them." if hard else "")
    if extreme:
        explained += (f" {extreme} jumped at least {t['extreme_ratio']:g}× its median: more than any hard batch "
                      "explains (an overflow, a corrupt batch or the start of divergence).")
    elif spikes and not harmful:
        explained += " The loss did no worse after any of them."
    if hard and not spikes:
        remedies = [remedy(ctx, {"gradient_accumulation_steps": 4}, "average more pairs per update")]
    return finding(ctx, "grad_spike", [every[0], every[-1]],
                   {"spikes": len(every), "hard_batch_spikes": len(hard), "extreme_spikes": extreme,
                    "spikes_followed_by_higher_loss": harmful, "worst_ratio_to_median": worst,
                    "spike_steps": every[:10]},
                   f"grad_norm jumped above {t['ratio']:g}× its running median {len(every)} time(s) (worst "
                   f"{worst:.1f}×).{explained} Isolated spikes are survivable with clipping; repeated ones without "
                   "a hard batch to explain them precede divergence.",
                   remedies, severity=severity)


def _loss_rises_after(lv: list[float], j: int, t: dict) -> bool:
    """Is the mean loss of the ``window``/2 points after index ``j`` above the median of the ``window`` before by
    more than ``harm_share``? (A spike that did no harm leaves the curve on its way.)"""
    w = t["window"]
    before, after = lv[max(0, j - w):j], lv[j + 1:j + 1 + w // 2]
    if len(before) < 3 or len(after) < 3:
        return True  # too close to an edge to tell: count it as harmful
    b = median(before)
    return mean(after) > b + t["harm_share"] * abs(b)


def lr_too_high(ctx: Ctx):
    if _broken(ctx):
        return None
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
                   [scale_lr(ctx, 0.5, "halve the step (or more)"),
                    remedy(ctx, {"warmup_steps": 0.1}, "warm up over the first 10% of steps")])


def too_few_points(ctx: Ctx):
    t = ctx.th("too_few_points")
    n = len(ctx.rows)
    if n >= t["min_points"]:
        return None
    rows = ctx.rows
    return finding(ctx, "too_few_points", [rows[0]["step"], rows[-1]["step"]] if n else None, {"logged_points": n},
                   f"Only {n} logged point(s): the one-row checks ran, the trend checks (which need at least "
                   f"{t['min_points']}) did not. To decide, paste or log more of the run (logging_steps), with "
                   "loss, rewards/margins, rewards/accuracies, logps/chosen, logps/rejected and grad_norm.", [])
