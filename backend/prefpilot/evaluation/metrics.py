"""What an evaluation computes from numbers and token ids: pure Python, no torch, so it is tested directly.

Preference accuracy (share of held-out pairs whose chosen completion scores above the rejected one; a tie is
half a success, so a policy equal to its reference scores 0.5 on the implicit reward, not 0):
  summed     sum of the completion's log-probs under the policy: the ranking DPO moves
  per_token  the same divided by the completion's length: SimPO's reward
  implicit   β·(log π − log π_ref)(chosen) − the same for rejected: DPO's implicit reward margin, the number
             TRL logs as rewards/margins (rewards/accuracies is its share above 0)
Generation checks, on greedy completions of held-out prompts by the policy and by the reference:
  length_ratio          mean policy completion length / mean reference length (tokens, EOS not counted)
  cap_without_eos_rate  share that filled max_new_tokens without emitting EOS
  repetition_rate       share with a repetition loop (see ``has_loop``)
  empty_rate            share that is empty (EOS first, or only whitespace)
  kl_per_token          mean over the policy's completion tokens of log π − log π_ref: the k1 estimate of the
                        per-token KL to the reference, on the policy's own (greedy) outputs
"""
from __future__ import annotations

import math
from statistics import median


def accuracy(pairs) -> float:
    pairs = list(pairs)
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / max(1, len(pairs))


def accuracy_se(acc: float, n: int) -> float:
    """Sampling error of a held-out accuracy over ``n`` pairs: the binomial standard error with two successes and
    two failures added (Agresti & Coull 1998), so that 20 of 20 right is not reported as exact. At 20 pairs an
    accuracy near 0.5 is ±0.10: a gap smaller than two of these between checkpoints is noise."""
    if n <= 0:
        return float("nan")
    p = (acc * n + 2) / (n + 4)
    return math.sqrt(p * (1 - p) / (n + 4))


def preference_summary(policy: dict, reference: dict | None, beta: float | None) -> dict:
    """Accuracies and margins from per-pair log-prob sums and lengths.

    ``policy``/``reference``: {"chosen": [sum], "rejected": [sum], "chosen_len": [n], "rejected_len": [n]}.
    ``beta`` given (DPO family) adds the implicit reward."""
    c, r = policy["chosen"], policy["rejected"]
    nc, nr = policy["chosen_len"], policy["rejected_len"]
    margins = {"summed": [a - b for a, b in zip(c, r)],
               "per_token": [a / max(1, n) - b / max(1, m) for a, b, n, m in zip(c, r, nc, nr)]}
    if reference is not None and beta is not None:
        rc, rr = reference["chosen"], reference["rejected"]
        margins["implicit"] = [beta * ((a - x) - (b - y)) for a, b, x, y in zip(c, r, rc, rr)]
    out = {"pairs": len(c)}
    for key, m in margins.items():
        out[key] = {"accuracy": accuracy((v, 0.0) for v in m), "mean_margin": sum(m) / max(1, len(m)),
                    "median_margin": median(m) if m else 0.0}
    out["margins"] = margins
    return out


def has_loop(ids: list[int], max_n: int = 16, min_repeats: int = 3, min_span: int = 12) -> bool:
    """A repetition loop: some block of 1..max_n tokens repeated back to back at least ``min_repeats`` times,
    covering at least ``min_span`` tokens ("the the the ..." or a sentence said three times over). Short
    legitimate repeats ("1, 2, 3" or "ha ha") stay under the span."""
    n_ids = len(ids)
    for n in range(1, max_n + 1):
        need = max(min_repeats, math.ceil(min_span / n))
        if need * n > n_ids:
            break
        run = 1
        for i in range(n, n_ids - n + 1, n):
            if ids[i:i + n] == ids[i - n:i]:
                run += 1
                if run >= need:
                    return True
            else:
                run = 1
        # blocks aligned at every offset, not only multiples of n from the start
        for start in range(1, n):
            run = 1
            for i in range(start + n, n_ids - n + 1, n):
                if ids[i:i + n] == ids[i - n:i]:
                    run += 1
                    if run >= need:
                        return True
                else:
                    run = 1
    return False


def generation_summary(samples: list[dict], max_new_tokens: int) -> dict:
    """Rates over samples {"tokens": [ids without EOS], "eos": bool, "text": str} of one model."""
    n = max(1, len(samples))
    lengths = [len(s["tokens"]) for s in samples]
    return {"samples": len(samples), "mean_length": sum(lengths) / n,
            "cap_without_eos_rate": sum(1 for s in samples if not s["eos"] and len(s["tokens"]) >= max_new_tokens) / n,
            "repetition_rate": sum(1 for s in samples if has_loop(s["tokens"])) / n,
            "empty_rate": sum(1 for s in samples if not s["text"].strip()) / n}


def compare_generations(policy: dict, reference: dict, kl_terms: list[float]) -> dict:
    """The policy's generation summary beside the reference's, with the length ratio and the KL estimate."""
    ratio = policy["mean_length"] / reference["mean_length"] if reference["mean_length"] > 0 else None
    return {"length_ratio": round(ratio, 4) if ratio is not None else None,
            "cap_without_eos_rate": policy["cap_without_eos_rate"], "repetition_rate": policy["repetition_rate"],
            "empty_rate": policy["empty_rate"],
            "kl_per_token": sum(kl_terms) / len(kl_terms) if kl_terms else 0.0,
            "policy": policy, "reference": reference}


def primary_metric(method: str) -> str:
    """The held-out accuracy a method optimises: DPO's implicit reward, SimPO's per-token log-prob."""
    return "per_token" if method in ("simpo", "cpo", "orpo") else "implicit"
