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


def preference_accuracy(model, tok, rows, ref_logps=None, beta: float = 0.1) -> dict:
    c, r, nc, nr = completion_logps(model, tok, rows)
    avg_c, avg_r = [a / max(1, n) for a, n in zip(c, nc)], [b / max(1, n) for b, n in zip(r, nr)]
    out = {"pairs": len(rows), "logprob_accuracy": _acc(zip(c, r)), "avg_logprob_accuracy": _acc(zip(avg_c, avg_r)),
           "mean_avg_logprob_margin": sum(a - b for a, b in zip(avg_c, avg_r)) / max(1, len(rows))}
    if ref_logps is not None:
        rc, rr = ref_logps
        margins = [beta * ((a - x) - (b - y)) for a, b, x, y in zip(c, r, rc, rr)]
        out["implicit_reward_accuracy"] = _acc((m, 0.0) for m in margins)
        out["mean_implicit_margin"] = sum(margins) / max(1, len(margins))
    return out, (c, r)


def evaluate_run(model_dir: str, ref_dir: str, rows: list[dict], beta: float = 0.1) -> dict:
    """Accuracy of the reference (before) and of the trained model (after) on the same held-out rows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(ref_dir)
    ref = AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float32)
    before, ref_logps = preference_accuracy(ref, tok, rows, beta=beta)
    before, _ = preference_accuracy(ref, tok, rows, ref_logps=ref_logps, beta=beta)
    del ref
    from pathlib import Path
    if (Path(model_dir) / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM
        policy = AutoPeftModelForCausalLM.from_pretrained(model_dir)
    else:
        policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    after, _ = preference_accuracy(policy, tok, rows, ref_logps=ref_logps, beta=beta)
    return {"before": before, "after": after}
