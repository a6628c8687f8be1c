"""Signatures: findings one logged row is enough for.

A bug report usually pastes one to four log lines. These rules read what an engineer reads at a
glance: NaN anywhere, gradients or rewards or log-probs that are exactly zero, rewards far from zero
before training has moved, a loss of zero from the start, a learning rate outside the published range.
"""
from __future__ import annotations

import math
from bisect import bisect_right

from . import Ctx, finding, num, remedy, scale_lr

# logged by transformers after the loss is computed; not a model output
_NOT_MODEL_OUTPUT = {"learning_rate", "epoch", "step"}


def _nonfinite(ctx: Ctx, keys) -> tuple[dict, float | None]:
    """{key: [steps]} of NaN/inf values in ``keys`` (both splits), and the first such step."""
    hits, first = {}, None
    for split in ("train", "eval"):
        for k in sorted(ctx.hist.nonfinite[split]):
            if k not in keys:
                continue
            steps, vals = ctx.hist.series(k, split)
            bad = [s for s, v in zip(steps, vals) if not math.isfinite(v)]
            if bad:
                hits[f"eval_{k}" if split == "eval" else k] = bad
                first = min(bad) if first is None else min(first, min(bad))
    return hits, first


def _nan_remedies(ctx: Ctx) -> list[dict]:
    out = [scale_lr(ctx, 0.1, "a smaller step keeps the log-ratios finite"),
           remedy(ctx, {"max_grad_norm": 1.0}, "clip gradients so one batch cannot blow up the weights")]
    if ctx.cfg.get("fp16"):
        out.insert(0, remedy(ctx, {"fp16": False, "bf16": True},
                             "fp16 overflows on large log-prob sums; bf16 has fp32's range"))
    return out


def _all_keys(ctx: Ctx) -> set:
    return ctx.hist.nonfinite["train"] | ctx.hist.nonfinite["eval"]


def nan_loss(ctx: Ctx):
    hits, first = _nonfinite(ctx, {"loss"})
    if first is None:
        return None
    others, _ = _nonfinite(ctx, _all_keys(ctx) - {"loss"} - _NOT_MODEL_OUTPUT)
    keys = sorted(set(hits) | set(others))
    last = ctx.hist.train[-1]["step"] if ctx.hist.train else first
    why = (f"Non-finite values ({', '.join(keys)}) first at step {first:g}: every later update is garbage. Usual "
           "causes: fp16 overflow, a learning rate far too high, empty completions.")
    remedies = _nan_remedies(ctx)
    if ctx.method in ("simpo", "cpo") and {"logps/chosen", "logps/rejected"} & set(others):
        why += _EMPTY_SIMPO
        remedies.insert(0, _room_for_completion(ctx))
    return finding(ctx, "nan_loss", [first, last],
                   {"first_step": first, "rows_affected": len({s for v in hits.values() for s in v}),
                    "keys": keys}, why, remedies)


def nonfinite_metrics(ctx: Ctx):
    """NaN/inf anywhere else (grad_norm, logits, entropy, log-probs, rewards), or the masked-loss tell."""
    if "nan_loss" in ctx.found:
        return None  # already reported, with every key
    hits, first = _nonfinite(ctx, _all_keys(ctx) - _NOT_MODEL_OUTPUT)
    if first is None:
        return None
    gsteps = set(hits.get("grad_norm", []))
    ls, lv = ctx.hist.series("loss", "train")
    masked = sorted(s for s, v in zip(ls, lv) if v == 0.0 and s in gsteps)
    keys = sorted(hits)
    last = ctx.hist.train[-1]["step"] if ctx.hist.train else first
    why = f"Non-finite values in {', '.join(keys)}, first at step {first:g}"
    if masked:
        why += (f"; the loss reads exactly 0.0 at step(s) {', '.join(f'{s:g}' for s in masked[:5])} beside a "
                "non-finite grad_norm: transformers' logging_nan_inf_filter (on by default) hides a NaN loss that way")
    elif "grad_norm" in hits:
        why += ("; with logging_nan_inf_filter on (the default) a NaN loss is replaced in the log by the running "
                "mean, so a finite-looking loss does not clear the run")
    only_logits = set(k.removeprefix("eval_") for k in keys) <= {"logits/chosen", "logits/rejected"}
    if only_logits:
        why += (". Only the logged mean logits are non-finite: the model produces inf/NaN logits for some "
                "positions (often padding under fp16/bf16 overflow); the loss can survive it for a while, the "
                "outputs may not")
    skipped = _scaler_skips(ctx, hits, masked)
    if skipped:
        t = ctx.th("nonfinite_metrics")
        return finding(ctx, "nonfinite_metrics", [first, last],
                       {"first_step": first, "keys": keys, "steps_per_key": {k: v[:5] for k, v in hits.items()},
                        "share_of_rows": skipped},
                       f"grad_norm is non-finite at {len(hits['grad_norm'])} isolated step(s) (first {first:g}, "
                       f"{skipped:.0%} of the logged rows, at most {t['scaler_skip_share']:.0%}) while the loss and "
                       "every other metric stay finite: the fp16 loss scaler found an overflow and skipped those "
                       "updates, which is how mixed precision calibrates its scale. Frequent skips waste steps; bf16 "
                       "has no scaler.", _nan_remedies(ctx), severity="info")
    why += ". Every update after a non-finite gradient is garbage."
    remedies = _nan_remedies(ctx)
    if ctx.method in ("simpo", "cpo") and {"logps/chosen", "logps/rejected"} & set(hits):
        why += _EMPTY_SIMPO
        remedies.insert(0, _room_for_completion(ctx))
    return finding(ctx, "nonfinite_metrics", [first, last],
                   {"first_step": first, "keys": keys, "steps_per_key": {k: v[:5] for k, v in hits.items()},
                    "masked_loss_steps": masked[:5]}, why, remedies)


def _scaler_skips(ctx: Ctx, hits: dict, masked: list) -> float | None:
    """The share of rows with a non-finite grad_norm, when that is all that is non-finite, the loss beside it is a
    real value (not the 0.0 that hides a NaN loss), and the rows are isolated: fp16's loss scaler skipping
    overflowing steps. None otherwise (then it is an error). Not for a bf16 run, which has no scaler."""
    if set(hits) != {"grad_norm"} or masked or not ctx.hist.train:
        return None
    bad = hits["grad_norm"]
    share = len(bad) / len(ctx.hist.train)
    t = ctx.th("nonfinite_metrics")
    if share > t["scaler_skip_share"] or ctx.cfg.get("bf16") is True:
        return None
    _, gn = ctx.finite("grad_norm", "train")
    return share if gn else None  # never a finite gradient norm: not a calibrating scaler


# SimPO/CPO average log-probs over completion tokens: zero tokens left gives 0/0
_EMPTY_SIMPO = (" With SimPO/CPO, NaN log-probs usually mean a completion with no tokens left after truncation (the "
                "prompt fills max_length): the average over zero tokens is 0/0.")


def _room_for_completion(ctx: Ctx) -> dict:
    ml = ctx.cfg.get("max_length") if isinstance(ctx.cfg.get("max_length"), int) else 1024
    return remedy(ctx, {"max_length": ml * 2}, "leave room for the completion after the prompt")


def _moved(ctx: Ctx) -> bool:
    """Did the policy move away from the reference at some logged point (rewards or margins non-zero)?"""
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        _, vals = ctx.finite(key)
        if any(v != 0.0 for v in vals):
            return True
    return False


def no_gradient(ctx: Ctx):
    t = ctx.th("no_gradient")
    steps, g = ctx.hist.series("grad_norm", "train")
    if g.count(0.0) < max(1, t["zero_share"] * len(g)):  # counted in C: the usual case ends here
        return None
    zero = [s for s, v in zip(steps, g) if v == 0.0]
    moved = _moved(ctx) and ctx.method in ("dpo", "kto")
    remedies = [remedy(ctx, {}, "check that parameters are trainable: print the number of parameters with "
                                "requires_grad (a frozen base model with no adapter trains nothing)")]
    if ctx.cfg.get("use_peft"):
        remedies.append(remedy(ctx, {"lora_target_modules": "all-linear"},
                               "LoRA target modules that match no layer names leave nothing to train"))
    why = (f"grad_norm is exactly 0.0 at {len(zero)} of {len(g)} logged step(s): no gradient reaches the weights, "
           "so nothing trains. Causes: frozen parameters, LoRA target modules that match nothing, a loss "
           "detached from the graph. A learning-rate change cannot fix this.")
    severity = None
    if moved:
        severity = "warning"
        why += (" Here the rewards do move, so the weights did change: a grad_norm of 0.0 beside moving rewards is "
                "usually a reporting artefact (DeepSpeed ZeRO-3 computes the norm on a partition) rather than a "
                "real absence of gradient.")
    return finding(ctx, "no_gradient", [zero[0], zero[-1]], {"zero_grad_rows": len(zero), "grad_rows": len(g)},
                   why, remedies, severity=severity)


def empty_completions(ctx: Ctx):
    if 0.0 not in ctx.hist.series("logps/chosen", ctx.split)[1]:  # the usual case, checked in C
        return None
    rows = [r for r in ctx.rows if r.get("logps/chosen") == 0.0 and r.get("logps/rejected") == 0.0]
    if not rows:
        return None
    ml = ctx.cfg.get("max_length") if isinstance(ctx.cfg.get("max_length"), int) else 1024
    remedies = [remedy(ctx, {}, "check the data: are the chosen/rejected columns filled, and does the chat "
                                "template leave completion tokens unmasked?"),
                remedy(ctx, {"max_length": ml * 2}, "room for the completion after the prompt")]
    return finding(ctx, "empty_completions", [rows[0]["step"], rows[-1]["step"]], {"rows": len(rows)},
                   f"logps/chosen and logps/rejected are both exactly 0 at {len(rows)} logged row(s): no completion "
                   "token is scored, so there is nothing to learn from. The completions are empty or masked (a "
                   "template or column problem), or truncated away: TRL 1.16's DPOTrainer drops rows whose prompt "
                   "alone fills max_length, so with it the data is the likelier cause.", remedies)


def reference_tracks_policy(ctx: Ctx):
    if ctx.found.get("no_gradient", {}).get("severity") == "error" or "empty_completions" in ctx.found:
        return None  # no update happened, or nothing is scored: that is the cause
    steps, rc = ctx.hist.series("rewards/chosen", ctx.split)
    if 0.0 not in rc:  # the usual case, checked in C
        return None
    # rows scored before any update: step 1, and the step after a warm-up step taken at learning rate 0
    first = bisect_right(steps, 1 + ctx.frozen_steps) if ctx.step_known() and ctx.split == "train" else 0
    after = len(rc) - first
    share = ctx.th("reference_tracks_policy")["zero_share"]
    if rc.count(0.0) - first < share * after:  # zero only at the first step, as TRL logs it: the usual case
        return None
    zero = [r for r in ctx.rows if r.get("rewards/chosen") == 0.0 and r.get("rewards/rejected") == 0.0
            and r.get("rewards/margins", 0.0) == 0.0
            and not (r.get("logps/chosen") == 0.0 and r.get("logps/rejected") == 0.0)]
    zero = [r for r in zero if ctx.first_update(r) is not True]
    if not zero or len(zero) < share * after:
        return None
    _, lpc = ctx.finite("logps/chosen")
    moving = len(set(lpc)) > 1
    certain = any(ctx.first_update(r) is False for r in zero)
    beta, src = ctx.beta
    why = (f"rewards/chosen and rewards/rejected are exactly 0 at {len(zero)} logged row(s)"
           + (" while logps/chosen changes" if moving else "") +
           ": the reference log-probs equal the policy's, so the implicit reward β·(log π − log π_ref) is always "
           "0 and DPO has no signal. Causes: beta 0; the reference is the policy itself (the same model object "
           "passed as ref_model, or a reference synced every step); with PEFT, the reference computed without "
           "disabling the adapter. A learning-rate change cannot fix this.")
    if not certain:
        why += (" The log does not say which step this is: zero rewards are expected at the very first optimizer "
                "step (logging_steps 1), and only there.")
    remedies = [remedy(ctx, {}, "pass ref_model=None (TRL then builds a frozen copy, or disables the adapter "
                                "under PEFT) rather than the policy object; do not set sync_ref_model with "
                                "ref_model_sync_steps 1")]
    if ctx.config_given and ctx.cfg.get("use_peft"):
        remedies.append(remedy(ctx, {}, "with a PEFT model, keep the base weights unmerged so disabling the "
                                        "adapter gives the reference (or name it with ref_adapter_name)"))
    if src == "config" and beta <= 0:
        remedies.insert(0, remedy(ctx, {"beta": 0.1}, "β 0 makes every reward 0"))
    return finding(ctx, "reference_tracks_policy", [zero[0]["step"], zero[-1]["step"]],
                   {"zero_reward_rows": len(zero), "rows_after_first_step": after,
                    "logps_chosen_moving": moving}, why, remedies,
                   severity=None if certain else "warning")


def reference_mismatch(ctx: Ctx):
    if plumbing_before(ctx):
        return None
    rows = [r for r in ctx.rows if "rewards/chosen" in r or "rewards/margins" in r]
    if not rows:
        return None
    r0 = rows[0]
    t = ctx.th("reference_mismatch")
    first, start = ctx.first_update(r0), ctx.at_start(r0)
    if first is True:
        limit = t["first_step_nats"]
    elif start and (not ctx.step_known() or r0["step"] <= t["early_step"]) and _early_epoch(r0, t):
        limit = t["early_nats"]
    else:
        return None
    beta, src = ctx.beta
    size = max((abs(r0.get(k, 0.0)) for k in ("rewards/chosen", "rewards/rejected", "rewards/margins")
                if math.isfinite(r0.get(k, 0.0))), default=0.0)
    if first is not True and not ctx.step_known() and "rewards/chosen" in r0 and "rewards/rejected" in r0:
        # no step logged: an early epoch can still be many updates, and updates move one answer far (a learned
        # margin); a reference that is another model moves both answers' log-ratios, so both must be large
        size = min(abs(r0["rewards/chosen"]), abs(r0["rewards/rejected"]))
    nats = size / beta
    if nats <= limit:
        return None
    when = "at the first optimizer step, where policy and reference are the same weights" if first else \
        f"at the first logged point (step {r0['step']:g})"
    return finding(ctx, "reference_mismatch", [r0["step"], r0["step"]],
                   {"largest_reward": size, "beta": beta, "beta_source": src, "log_ratio_nats": nats,
                    "limit_nats": limit},
                   f"A reward of {size:.3g} {when} means log π/π_ref ≈ {nats:.3g} nats (β = {beta:g}, {src}): the "
                   "reference is not the model training started from. A different checkpoint or tokenizer, another "
                   "dtype or quantisation for the reference, or precomputed reference log-probs from another run.",
                   [remedy(ctx, {}, "load the reference from the same checkpoint, dtype and quantisation as the "
                                    "policy (ref_model=None does this), or recompute precomputed reference log-probs")])


def _early_epoch(row: dict, t: dict) -> bool:
    ep = row.get("epoch")
    return not isinstance(ep, (int, float)) or ep <= t["early_epoch"]


def plumbing_before(ctx: Ctx) -> bool:
    return any(f in ctx.found for f in ("no_gradient", "empty_completions", "reference_tracks_policy"))


def instant_saturation(ctx: Ctx):
    t = ctx.th("instant_saturation")
    early = []
    for r in ctx.rows:  # rows are in step order: only the first few can be "at the start"
        if "loss" not in r or not math.isfinite(r["loss"]):
            continue
        if ctx.at_start(r) is not True or len(early) == t["first_points"]:
            break
        if ctx.first_update(r) is not True:
            early.append(r)
    if not early:
        return None
    sat = [r for r in early if r["loss"] <= t["loss_below"]
           and r.get("rewards/accuracies", 1.0) >= t["accuracy_at_least"]]
    if len(sat) < len(early):
        return None
    return finding(ctx, "instant_saturation", [early[0]["step"], early[-1]["step"]],
                   {"first_losses": [r["loss"] for r in early],
                    "first_accuracies": [r.get("rewards/accuracies") for r in early if "rewards/accuracies" in r]},
                   f"The loss is already ≤ {t['loss_below']:g} with accuracy 1.0 at the first logged point(s): the "
                   "pairs are separated before any real training. Trivially separable pairs (a rejected answer that "
                   "is empty, truncated or in another format), pairs far off the policy's distribution, or a "
                   "reference that does not match the policy. The loss then carries almost no gradient.",
                   [remedy(ctx, {}, "look at a few pairs: does rejected differ from chosen only by something trivial "
                                    "(length, a stop token, a template)?"),
                    scale_lr(ctx, 0.5, "if the pairs are fine, a smaller step keeps the first updates from "
                                       "overshooting")])


def lr_ranges(ctx: Ctx) -> tuple[list, list, list]:
    """(full fine-tuning, LoRA, typical) learning-rate ranges for the run's method. DPO's, SimPO's, ORPO's and
    KTO's come from their hyperparameter tables (the one range validate, plan and explain quote too); plain CPO's
    and an unknown method's from findings.yaml."""
    if ctx.method in ("dpo", "simpo", "orpo", "kto"):
        from ...skills import load_table
        r = load_table(ctx.method)["ranges"]["learning_rate"]
        return r["sane"], r["lora"], r["typical"]
    t = ctx.th("lr_out_of_range")
    full = t["full"][ctx.method]
    return full, t["lora"][ctx.method], full


LEARNING_FALL = 0.1  # a training loss this share below its start (first vs last tenth of the rows) is learning


def _loss_fall(ctx: Ctx):
    """(start, end) of the training loss when it clearly falls over at least 5 logged points, else None."""
    _, loss = ctx.finite("loss", "train")
    if len(loss) < 5:
        return None
    k = max(1, len(loss) // 10)
    a, b = sum(loss[:k]) / k, sum(loss[-k:]) / k
    return (a, b) if a > 0 and b <= (1 - LEARNING_FALL) * a else None


def lr_out_of_range(ctx: Ctx):
    lr, src = ctx.lr
    if src.startswith("TRL"):
        return None  # nothing was said about the learning rate
    full, lora, typical = lr_ranges(ctx)
    peft = ctx.peft
    from_log = src != "config"  # a logged value may be mid-warm-up: only "too high" can be judged from it
    if peft is not None:
        lo, hi = lora if peft else full
        kind = "LoRA" if peft else "full fine-tuning"
        if lr > hi:
            sev, where = "warning", f"above the accepted {lo:g}–{hi:g} for {ctx.method.upper()} {kind}"
        elif lr < lo and not from_log:
            sev, where = "warning", f"below the accepted {lo:g}–{hi:g} for {ctx.method.upper()} {kind}"
        else:
            return None
    else:
        if lr > lora[1]:
            sev, where = "warning", (f"above the accepted range for {ctx.method.upper()} with full fine-tuning "
                                     f"({full[0]:g}–{full[1]:g}) and with LoRA ({lora[0]:g}–{lora[1]:g})")
        elif lr > full[1]:
            sev, where = "info", (f"above the accepted {full[0]:g}–{full[1]:g} for {ctx.method.upper()} full "
                                  f"fine-tuning, though within the LoRA range {lora[0]:g}–{lora[1]:g} (no config "
                                  "says whether this run uses LoRA)")
        elif lr < full[0] and not from_log:
            sev, where = "warning", f"below the accepted {full[0]:g}–{full[1]:g} for {ctx.method.upper()}"
        else:
            return None
    ev = {"learning_rate": lr, "source": src, "full_range": full, "lora_range": lora,
          "use_peft": "unknown" if peft is None else peft}
    seen = ""
    if where.startswith("below"):
        # too low a rate is a problem because the policy stays at the reference; a loss that clearly falls says
        # this run moves anyway (another trainer's scale, a long run), so the range is a note, not a warning
        fall = _loss_fall(ctx)
        if fall:
            sev = "info"
            ev.update(loss_start=fall[0], loss_end=fall[1])
            seen = f" Here the loss falls {fall[0]:.3g} → {fall[1]:.3g}, so the run does learn at this rate."
    # back inside the range people use, not to its edge (the edge of "accepted" is not a recommendation)
    target = typical[1] if lr > full[1] and not peft else (lora[1] if lr > full[1] else typical[0])
    steps, _ = ctx.finite("learning_rate", "train")
    return finding(ctx, "lr_out_of_range", [steps[0], steps[-1]] if steps else None, ev,
                   f"Learning rate {num(lr)} ({src}) is {where} (typical {typical[0]:g}–{typical[1]:g}). "
                   "Too high a rate saturates or "
                   "diverges within a few hundred steps; too low a rate leaves the policy at the reference." + seen,
                   [remedy(ctx, {"learning_rate": target}, "the top of the typical range for this method"
                           if target == typical[1] else "back inside the published range for this method")],
                   severity=sev)
