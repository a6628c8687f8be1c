"""Synthetic training histories: a healthy DPO/SimPO run and one variant per pathology.

Shapes follow what TRL logs (per-step batch means, accuracies in steps of 1/batch).
Each builder takes ``severity`` in [0, 1]-ish units so a test can build one history
that trips a rule and a milder one that does not.
"""
from __future__ import annotations

import math
import random


def healthy(n: int = 120, method: str = "dpo", seed: int = 0, eval_every: int = 20) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(1, n + 1):
        t = i / n
        if method == "dpo":
            margin = 1.6 * (1 - math.exp(-3 * t)) + rng.gauss(0, 0.08)
            loss = 0.6931 - 0.33 * (1 - math.exp(-3 * t)) + rng.gauss(0, 0.03)
            chosen = -120 - 2.5 * t + rng.gauss(0, 0.5)
            rejected = -125 - 16 * t + rng.gauss(0, 0.5)
            acc_p = 0.5 + 0.3 * (1 - math.exp(-3 * t))
        else:  # SimPO: rewards = β·avg logp (β=2), margins should pass γ=1
            margin = 0.1 + 2.0 * (1 - math.exp(-3 * t)) + rng.gauss(0, 0.08)
            loss = 1.31 - 0.6 * (1 - math.exp(-3 * t)) + rng.gauss(0, 0.03)
            chosen = -1.0 - 0.1 * t + rng.gauss(0, 0.02)
            rejected = -1.05 - 0.9 * t + rng.gauss(0, 0.02)
            acc_p = 0.55 + 0.25 * (1 - math.exp(-3 * t))
        acc = sum(rng.random() < acc_p for _ in range(8)) / 8
        row = {"step": i, "epoch": round(t, 3), "loss": loss, "rewards/margins": margin, "rewards/accuracies": acc,
               "rewards/chosen": margin * 0.2, "rewards/rejected": -margin * 0.8, "logps/chosen": chosen,
               "logps/rejected": rejected, "grad_norm": 6 + rng.gauss(0, 1), "learning_rate": 5e-7}
        if method == "simpo":
            row["nll_loss"] = -chosen
        elif i == 1:  # TRL's first step: the policy still equals the reference, so every reward is exactly 0
            row.update({"loss": 0.6931, "rewards/margins": 0.0, "rewards/accuracies": 0.0, "rewards/chosen": 0.0,
                        "rewards/rejected": 0.0})
        rows.append(row)
        if eval_every and i % eval_every == 0:
            # eval is a mean over a whole held-out set: smooth, unlike per-batch training values
            smooth = 1 - math.exp(-3 * t)
            e_loss = 0.7131 - 0.3 * smooth if method == "dpo" else 1.33 - 0.55 * smooth
            e_margin = 0.9 * (1.6 * smooth if method == "dpo" else 0.1 + 2.0 * smooth)
            rows.append({"step": i, "eval_loss": e_loss, "eval_rewards/margins": e_margin,
                         "eval_rewards/accuracies": acc_p, "eval_runtime": 1.2})
    return rows


def set_series(rows, key, fn):
    """Overwrite ``key`` in training rows with fn(t in (0,1], i, old value)."""
    train = [r for r in rows if "loss" in r]
    n = len(train)
    for i, r in enumerate(train, 1):
        r[key] = fn(i / n, i, r.get(key))
    return rows


def nan_from(step: int, rows=None):
    rows = rows or healthy()
    for r in rows:
        if "loss" in r and r["step"] >= step:
            r["loss"] = float("nan")
            r["rewards/margins"] = float("nan")
    return rows


def flat(rows=None, wobble: float = 0.0, seed: int = 1):
    """Policy == reference: loss ln 2, margins 0 (plus optional noise)."""
    rng = random.Random(seed)
    rows = rows or healthy()
    set_series(rows, "loss", lambda t, i, v: 0.6931 + rng.uniform(-wobble, wobble))
    set_series(rows, "rewards/margins", lambda t, i, v: rng.uniform(-wobble, wobble))
    set_series(rows, "rewards/accuracies", lambda t, i, v: 0.0)
    return rows


def chance(rows=None, level: float = 0.5, seed: int = 2):
    rng = random.Random(seed)
    rows = rows or healthy()
    set_series(rows, "rewards/accuracies", lambda t, i, v: sum(rng.random() < level for _ in range(8)) / 8)
    set_series(rows, "rewards/margins", lambda t, i, v: rng.gauss(0.02, 0.1))
    return rows


def negative(rows=None, depth: float = 1.5):
    rows = rows or healthy()
    set_series(rows, "rewards/margins", lambda t, i, v: -depth * (1 - math.exp(-3 * t)))
    set_series(rows, "rewards/accuracies", lambda t, i, v: 0.5 - 0.3 * t)
    return rows


def exploding(rows=None, top: float = 40.0):
    rows = rows or healthy()
    set_series(rows, "rewards/margins", lambda t, i, v: top * t ** 3)
    return rows


def saturating(rows):
    """The loss that sigmoid DPO gives for each row's margin (log(1 + e^-margin)): a runaway margin takes it to 0."""
    for r in rows:
        if "rewards/margins" in r and "loss" in r:
            r["loss"] = math.log1p(math.exp(-r["rewards/margins"]))
    return rows


def pinned(rows=None, from_t: float = 0.1):
    rows = rows or healthy()
    set_series(rows, "rewards/accuracies", lambda t, i, v: 1.0 if t >= from_t else 0.5)
    return rows


def displaced(rows=None, drop: float = 40.0, rejected_factor: float = 1.2, beta: float = 0.1):
    """Chosen falls ``drop`` nats below the reference, rejected ``rejected_factor`` times as far."""
    rows = rows or healthy()
    set_series(rows, "logps/chosen", lambda t, i, v: -120 - drop * t)
    set_series(rows, "logps/rejected", lambda t, i, v: -125 - rejected_factor * drop * t)
    set_series(rows, "rewards/chosen", lambda t, i, v: -beta * drop * t)
    set_series(rows, "rewards/rejected", lambda t, i, v: -beta * rejected_factor * drop * t)
    return rows


def eval_diverging(rows=None, fall: float = 0.6):
    """Eval margin rises to its best half-way, then falls to (1 - fall) of it."""
    rows = rows or healthy()
    evals = [r for r in rows if "eval_loss" in r]
    for k, r in enumerate(evals, 1):
        t = k / len(evals)
        r["eval_rewards/margins"] = 1.2 * t / 0.5 if t <= 0.5 else 1.2 * (1 - fall * (t - 0.5) / 0.5)
    return rows


def spiky(rows=None, at=(40, 60, 80), height: float = 120.0, harm: bool = False):
    """grad_norm spikes at ``at``; with ``harm`` the loss runs 40% higher for the 8 logged points after each."""
    rows = rows or healthy()
    train = [r for r in rows if "loss" in r]
    for i, r in enumerate(train):
        if r["step"] in at:
            r["grad_norm"] = height
            if harm:
                for later in train[i + 1:i + 9]:
                    later["loss"] *= 1.4
    return rows


def simpo_short(rows=None, top: float = 0.6, flat_loss: bool = True, seed: int = 4):
    """SimPO margins that level off at ``top``; with ``flat_loss`` the loss has stopped falling too."""
    rng = random.Random(seed)
    rows = rows or healthy(method="simpo")
    set_series(rows, "rewards/margins", lambda t, i, v: top * (1 - math.exp(-3 * t)))
    if flat_loss:
        set_series(rows, "loss", lambda t, i, v: 1.2 + rng.gauss(0, 0.02))
    return rows


def oscillating(rows=None, amp: float = 0.5, seed: int = 3):
    rng = random.Random(seed)
    rows = rows or healthy()
    set_series(rows, "loss", lambda t, i, v: 0.6 + amp * t * (1 if i % 2 else -1) * (0.8 + 0.4 * rng.random()))
    return rows
