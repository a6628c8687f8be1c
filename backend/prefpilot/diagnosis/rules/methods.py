"""Rules that only make sense for one trainer."""
from __future__ import annotations

from . import Ctx, finding, mean, remedy, scale_lr, sig


def simpo_margin_below_target(ctx: Ctx):
    """SimPO asks for a margin of γ; below it is only a problem when the loss has also stopped improving."""
    if "no_learning" in ctx.found or "nan_loss" in ctx.found:
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
    # A faithful Llama-3-8B-Instruct replication ends at margin 0.66 with γ = 1.4 and is healthy: the loss
    # still falls. Only a flat loss makes the short margin a problem.
    _, loss = ctx.post("loss")
    flat = None
    if len(loss) >= t["min_points"]:
        half = len(loss) // 2
        first, second = mean(loss[:half]), mean(loss[half:])
        flat = (first - second) < t["loss_fall_share"] * abs(first)
    beta, _ = ctx.beta
    remedies = [scale_lr(ctx, 2, "the usual cause: too small a step"),
                remedy(ctx, {"simpo_gamma": sig(0.3 * beta)}, "γ/β = 0.3 asks for a smaller gap")]
    if beta < 1:
        remedies.append(remedy(ctx, {"beta": 2.0, "simpo_gamma": 1.0},
                               "β below 1 is a DPO value; SimPO uses 2-2.5"))
    ev = {"mean_margin_last_half": m, "simpo_gamma": float(gamma)}
    text = (f"The SimPO margin averages {m:.3g} over the last half, below the target γ = {gamma:g}")
    if flat:
        return finding(ctx, "simpo_margin_below_target", [steps[len(steps) - len(tail)], steps[-1]],
                       {**ev, "loss_flat": True},
                       text + ", and the loss has stopped falling: the model does not separate pairs by the "
                       "requested gap.", remedies)
    return finding(ctx, "simpo_margin_below_target", [steps[len(steps) - len(tail)], steps[-1]],
                   {**ev, "loss_flat": False if flat is False else "unknown"},
                   text + ". The loss is still falling, so this is common for real data (published SimPO runs end "
                   "below γ); it matters only if the loss flattens.", remedies, severity="info")
