"""Held-out preference accuracy: how often a model's implicit reward prefers the chosen answer.

Sequences are built as TRL's DPOTrainer builds standard-format rows (prompt tokens + completion
tokens + EOS), so the numbers match what the trainer optimised.
  implicit_reward_accuracy  share of pairs with β·(log π − log π_ref)(chosen) > same for rejected
                            (needs a reference; DPO's reward)
  avg_logprob_accuracy      share with mean per-token log π(chosen) > log π(rejected) (SimPO's reward)
  logprob_accuracy          share with summed log π(chosen) > log π(rejected)
  mean_avg_logprob_margin   mean of avg log π(chosen) − avg log π(rejected): SimPO's margin before β and γ,
                            which moves before the accuracy does on pairs that are already mostly right
Ties count as half a success, so a model equal to its reference scores 0.5, not 0.
"""
from __future__ import annotations

from pathlib import Path

import torch


@torch.no_grad()
def completion_logps(model, tok, rows: list[dict], batch_size: int = 16) -> tuple[list[float], list[float], list[int], list[int]]:
    """Summed completion log-probs and token counts of chosen and rejected, per row."""
    model.eval()
    seqs = []
    for r in rows:
        p = tok(text=r["prompt"])["input_ids"]
        for key in ("chosen", "rejected"):
            c = tok(text=r[key])["input_ids"] + [tok.eos_token_id]
            seqs.append((p, c))
    sums, counts = [], []
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i:i + batch_size]
        L = max(len(p) + len(c) for p, c in chunk)
        ids = torch.full((len(chunk), L), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for j, (p, c) in enumerate(chunk):
            ids[j, :len(p) + len(c)] = torch.tensor(p + c)
            attn[j, :len(p) + len(c)] = 1
            mask[j, len(p):len(p) + len(c)] = True
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        m = mask[:, 1:]
        sums += (lp * m).sum(1).tolist()
        counts += m.sum(1).tolist()
    return sums[0::2], sums[1::2], counts[0::2], counts[1::2]


def _acc(pairs) -> float:
    pairs = list(pairs)
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / max(1, len(pairs))


def summarise(logps, ref_logps=None, beta: float = 0.1) -> dict:
    """Accuracies and per-pair margins from ``completion_logps``' output (pure: no model)."""
    c, r, nc, nr = logps
    avg_c, avg_r = [a / max(1, n) for a, n in zip(c, nc)], [b / max(1, n) for b, n in zip(r, nr)]
    per_pair = {"summed": [a - b for a, b in zip(c, r)], "per_token": [a - b for a, b in zip(avg_c, avg_r)]}
    out = {"pairs": len(c), "logprob_accuracy": _acc(zip(c, r)), "avg_logprob_accuracy": _acc(zip(avg_c, avg_r)),
           "mean_avg_logprob_margin": sum(per_pair["per_token"]) / max(1, len(c))}
    if ref_logps is not None:
        rc, rr = ref_logps[:2]
        per_pair["implicit"] = [beta * ((a - x) - (b - y)) for a, b, x, y in zip(c, r, rc, rr)]
        out["implicit_reward_accuracy"] = _acc((m, 0.0) for m in per_pair["implicit"])
        out["mean_implicit_margin"] = sum(per_pair["implicit"]) / max(1, len(c))
    out["margins"] = per_pair
    return out


def preference_accuracy(model, tok, rows, ref_logps=None, beta: float = 0.1) -> tuple[dict, tuple]:
    logps = completion_logps(model, tok, rows)
    return summarise(logps, ref_logps, beta), logps


def evaluate_run(model_dir: str, ref_dir: str, rows: list[dict], beta: float = 0.1) -> dict:
    """Accuracy of the reference (before) and of the trained model (after) on the same held-out rows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(ref_dir)
    ref = AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float32)
    ref_logps = completion_logps(ref, tok, rows)
    before = summarise(ref_logps, ref_logps, beta)  # the reference against itself: every implicit margin is 0
    del ref
    if (Path(model_dir) / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM
        policy = AutoPeftModelForCausalLM.from_pretrained(model_dir)
    else:
        policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    after, _ = preference_accuracy(policy, tok, rows, ref_logps=ref_logps, beta=beta)
    return {"before": before, "after": after}


def plot_margins(ev: dict, out, title: str = "") -> Path:
    """Histograms of the held-out per-pair margins (chosen minus rejected) before and after training, summed and
    per token: accuracy is the share right of 0."""
    import matplotlib
    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in zip(axes, ("summed", "per_token"),
                              ("summed log-prob margin (nats)", "per-token log-prob margin (nats/token)")):
        b, a = ev["before"]["margins"][key], ev["after"]["margins"][key]
        lo, hi = min(b + a + [0.0]), max(b + a + [0.0])
        bins = [lo + (hi - lo) * i / 24 for i in range(25)] if hi > lo else 10
        ax.hist(b, bins=bins, alpha=0.6, label="before", color="#7f7f7f")
        ax.hist(a, bins=bins, alpha=0.6, label="after", color="#1f77b4")
        ax.axvline(0.0, color="black", lw=1)
        ax.set_xlabel(label)
        ax.set_ylabel("pairs")
        ax.legend(loc="upper left", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
