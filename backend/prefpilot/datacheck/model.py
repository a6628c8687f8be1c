"""The checks that need the model's tokenizer, and the reference model's view of each pair (heavy: imports
transformers, TRL and, for scoring, torch).

Rows are tokenized by TRL's own DPO preparation (evaluation.engine.tokenize_pairs: the chat template, EOS,
the prompt/completion split), in chunks, so what is counted here is what the trainer will see.
"""
from __future__ import annotations

import statistics
import time

from .layouts import is_messages

CHUNK = 128  # rows tokenized and scored at a time: memory stays bounded whatever the file size
ALREADY_PREFERRED_SHARE = 0.9  # the reference already ranks at least this share of pairs right (both measures)


def load_tokenizer(model_path: str):
    from datasets.utils.logging import disable_progress_bar
    from transformers import AutoTokenizer
    disable_progress_bar()  # TRL's dataset.map bars would drown the report; progress() reports instead
    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def token_findings(rows: list[tuple[int, dict]], tok, max_length: int, progress=None) -> tuple[list[dict], dict]:
    """``truncated``, ``prompt_fills_max_length`` and ``no_chat_template`` for (row number, TRL row) pairs, and
    token-length statistics (chosen/rejected completion tokens, for length_bias in tokens)."""
    from ..evaluation.engine import tokenize_pairs
    conversational = [n for n, r in rows if is_messages(r.get("chosen")) or is_messages(r.get("prompt"))]
    if conversational and not getattr(tok, "chat_template", None):
        return [{"id": "no_chat_template", "severity": "error", "rows": conversational[:5],
                 "count": len(conversational),
                 "explanation": f"{len(conversational)} conversational row(s), and the tokenizer has no chat "
                                "template: TRL cannot turn the messages into text",
                 "remedy": "use a chat (instruct) model's tokenizer, set tokenizer.chat_template, or convert the "
                           "rows to plain prompt/chosen/rejected strings"}], {}
    fills, cut, lens = [], [], []
    for i in range(0, len(rows), CHUNK):
        chunk = rows[i:i + CHUNK]
        toks = tokenize_pairs([r for _, r in chunk], tok, None)  # untruncated: the lengths as they are
        for (n, _), t in zip(chunk, toks):
            p = len(t["prompt_ids"])
            c, r = len(t["chosen_ids"]), len(t["rejected_ids"])
            lens.append((c, r))
            if p >= max_length:
                fills.append((n, p))
            elif p + max(c, r) > max_length:
                cut.append((n, p + max(c, r)))
        if progress:
            progress(min(i + CHUNK, len(rows)), len(rows), "tokenized")
    out = []
    if fills:
        out.append({"id": "prompt_fills_max_length", "severity": "error", "rows": [n for n, _ in fills[:5]],
                    "count": len(fills),
                    "explanation": f"{len(fills)} prompt(s) reach max_length={max_length} tokens on their own "
                                   f"(longest {max(p for _, p in fills)}; rows {', '.join(str(n) for n, _ in fills[:5])}): their completions are cut to nothing, "
                                   "so the pair has no answer to score (SimPO's per-token average becomes 0/0, NaN)",
                    "remedy": f"raise max_length above the longest prompt plus its answers, shorten or drop these "
                              f"rows"})
    if cut:
        share = len(cut) / len(rows)
        out.append({"id": "truncated", "severity": "warning" if share >= 0.05 else "info",
                    "rows": [n for n, _ in cut[:5]], "count": len(cut),
                    "explanation": f"{len(cut)} pair(s) ({share:.1%}) exceed max_length={max_length} tokens and "
                                   f"lose the end of an answer (longest {max(t for _, t in cut)}; rows "
                                   f"{', '.join(str(n) for n, _ in cut[:5])}): the loss compares "
                                   "truncated answers, and a cut EOS teaches the model not to stop",
                    "remedy": "raise max_length, or drop the longest pairs"})
    stats = {}
    if lens:
        stats = {"chosen_tokens_median": statistics.median(c for c, _ in lens),
                 "rejected_tokens_median": statistics.median(r for _, r in lens), "pairs": len(lens)}
    return out, {"stats": stats, "lengths": lens}


def score(rows: list[tuple[int, dict]], model_path: str, tok, max_length: int, progress=None) -> dict:
    """Every pair under the reference model: summed and per-token log-prob margins (chosen minus rejected),
    the share it already ranks right, and the raw log-probs (for the cache training reuses)."""
    from ..evaluation import engine
    model = engine.load_model(model_path)  # scored under no_grad inside engine.sequence_logps
    pad = tok.pad_token_id
    chosen, rejected, summed, per_token = [], [], [], []
    t0 = time.time()
    for i in range(0, len(rows), CHUNK):
        chunk = [r for _, r in rows[i:i + CHUNK]]
        lp = engine.pair_logps(model, engine.tokenize_pairs(chunk, tok, max_length), pad, max_length)
        for c, r, cl, rl in zip(lp["chosen"], lp["rejected"], lp["chosen_len"], lp["rejected_len"]):
            chosen.append(c)
            rejected.append(r)
            summed.append(c - r)
            per_token.append((c / cl if cl else 0.0) - (r / rl if rl else 0.0))
        if progress:
            progress(min(i + CHUNK, len(rows)), len(rows), "scored by the reference")
    seconds = time.time() - t0
    n = max(1, len(summed))
    return {"pairs": len(summed), "seconds": round(seconds, 1),
            "already_preferred": {"summed": round(sum(m > 0 for m in summed) / n, 3),
                                  "per_token": round(sum(m > 0 for m in per_token) / n, 3)},
            "margin_median": {"summed": round(statistics.median(summed), 3) if summed else None,
                              "per_token": round(statistics.median(per_token), 4) if per_token else None},
            "_chosen": chosen, "_rejected": rejected, "_summed": summed, "_per_token": per_token}


def score_finding(s: dict) -> dict:
    ap = s["already_preferred"]
    easy = ap["summed"] >= ALREADY_PREFERRED_SHARE and ap["per_token"] >= ALREADY_PREFERRED_SHARE
    return {"id": "already_preferred", "severity": "warning" if easy else "info", "rows": [], "count": s["pairs"],
            "explanation": f"the reference model already ranks {ap['summed']:.0%} of {s['pairs']} pairs right by "
                           f"summed log-prob and {ap['per_token']:.0%} per token (median margins "
                           f"{s['margin_median']['summed']} nats, {s['margin_median']['per_token']} nats/token)"
                           + (": pairs this easy are separated further within a few steps, the loss falls "
                              "towards 0 and the margins grow without teaching much (instant_saturation, "
                              "margin_explosion in the diagnosis)" if easy else
                              ": the pairs leave the model something to learn"),
            "remedy": ("use harder pairs (rejected answers the model itself would give: on-policy samples), a "
                       "larger beta, or fewer steps; watch the first 20 steps with `prefpilot diagnose`" if easy
                       else "none needed")}
