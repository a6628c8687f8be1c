"""The model side of an evaluation (imports torch): tokenize pairs as TRL does, score them, generate.

Pairs go through TRL's own DPO preparation (`DPOTrainer._prepare_dataset`: prompt extraction, the chat
template for conversational rows, EOS on completions, the completion split where prompt and prompt+completion
token ids diverge), so a held-out accuracy here means what TRL's rewards/accuracies means on those pairs.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import torch

from .metrics import compare_generations, generation_summary


def load_model(path: str, base: str | None = None):
    """A checkpoint or final folder: full weights, or a LoRA adapter on ``base`` (the run's model)."""
    from transformers import AutoModelForCausalLM
    p = Path(path)
    if (p / "adapter_config.json").is_file():
        from peft import PeftModel
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), str(p))
    else:
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32)
    return model.eval()


def tokenize_pairs(rows: list[dict], tok, max_length: int | None) -> list[dict]:
    """prompt_ids/chosen_ids/rejected_ids per row, by TRL's DPOTrainer preparation itself."""
    from datasets import Dataset
    from trl import DPOTrainer
    # _prepare_dataset reads only these attributes of the trainer and its args
    trainer = SimpleNamespace(_tokenizer=tok)
    args = SimpleNamespace(dataset_num_proc=None, max_length=max_length, truncation_mode="keep_start")
    ds = DPOTrainer._prepare_dataset(trainer, Dataset.from_list([dict(r) for r in rows]), tok, args, "held-out")
    return [{"prompt_ids": r["prompt_ids"], "chosen_ids": r["chosen_ids"], "rejected_ids": r["rejected_ids"]}
            for r in ds]


LOGIT_BUDGET = 1 << 27  # logits held at once (batch x kept positions x vocab): 512 MB in float32


def _batches(order: list[int], seqs, max_length, batch_size: int, vocab: int):
    """Length-sorted batches of at most ``batch_size`` sequences whose logits fit ``LOGIT_BUDGET``: a batch of
    long sequences of a 50k-token vocabulary would otherwise hold gigabytes of logits."""
    batch = []
    for i in order:
        p, c = seqs[i]
        n = min(len(p) + len(c), max_length) if max_length else len(p) + len(c)
        width = max([n] + [b[1] for b in batch])
        if batch and (len(batch) >= batch_size or (len(batch) + 1) * width * vocab > LOGIT_BUDGET):
            yield [b[0] for b in batch]
            batch = []
        batch.append((i, n))
    if batch:
        yield [b[0] for b in batch]


@torch.no_grad()
def sequence_logps(model, seqs: list[tuple[list[int], list[int]]], pad_id: int, max_length: int | None,
                   batch_size: int = 32) -> tuple[list[float], list[int], list[list[float]]]:
    """Summed completion log-prob, completion length and per-token log-probs of (prompt, completion) pairs,
    truncated to ``max_length`` from the end as TRL's collator does (keep_start).

    Sequences are batched by length (less padding) within a logits budget, and the LM head runs only from the
    earliest completion token of a batch on (`logits_to_keep`): on short completions after long prompts that is
    most of the cost."""
    n = len(seqs)
    sums, lens, per_token = [0.0] * n, [0] * n, [[] for _ in range(n)]
    order = sorted(range(n), key=lambda i: len(seqs[i][0]) + len(seqs[i][1]))
    vocab = int(getattr(model.config, "vocab_size", 0) or 1)
    for idx in _batches(order, seqs, max_length, batch_size, vocab):
        chunk = [(seqs[i][0], (seqs[i][0] + seqs[i][1])[:max_length] if max_length else seqs[i][0] + seqs[i][1])
                 for i in idx]
        width = max(len(full) for _, full in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for j, (p, full) in enumerate(chunk):
            ids[j, :len(full)] = torch.tensor(full)
            attn[j, :len(full)] = 1
        first = max(1, min(len(p) for p, _ in chunk))  # position of the earliest completion token
        keep = width - first + 1  # logits at positions first-1 .. width-1 predict tokens first .. width
        logits = model(input_ids=ids, attention_mask=attn, logits_to_keep=keep).logits[:, :-1].float()
        # log-softmax at the target token only: one logsumexp instead of a second vocabulary-sized tensor
        lp = logits.gather(-1, ids[:, first:, None]).squeeze(-1) - torch.logsumexp(logits, -1)
        del logits
        for j, (p, full) in enumerate(chunk):
            toks = lp[j, len(p) - first:len(full) - first].tolist() if len(full) > len(p) else []
            i = idx[j]
            per_token[i], sums[i], lens[i] = toks, float(sum(toks)), len(toks)
    return sums, lens, per_token


def pair_logps(model, pairs: list[dict], pad_id: int, max_length: int | None) -> dict:
    seqs = [(p["prompt_ids"], p[k]) for p in pairs for k in ("chosen_ids", "rejected_ids")]
    sums, lens, _ = sequence_logps(model, seqs, pad_id, max_length)
    return {"chosen": sums[0::2], "rejected": sums[1::2], "chosen_len": lens[0::2], "rejected_len": lens[1::2]}


@torch.no_grad()
def generate(model, tok, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 8) -> list[dict]:
    """Greedy completions, left-padded in batches: token ids (EOS and after cut), whether EOS came, text."""
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for j, p in enumerate(chunk):
            ids[j, width - len(p):] = torch.tensor(p)
            attn[j, width - len(p):] = 1
        gen = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=pad, eos_token_id=eos)[:, width:].tolist()
        for g in gen:
            hit = eos in g
            toks = g[:g.index(eos)] if hit else g
            out.append({"tokens": toks, "eos": hit, "text": tok.decode(toks, skip_special_tokens=True)})
    return out


ENGINES = ("auto", "transformers", "vllm")


def pick_engine(engine: str, model_dir) -> str:
    """``auto``: vLLM when it is installed, a GPU is present and the model is a full checkpoint (a LoRA adapter
    stays with transformers); else transformers. ``vllm`` asked for where it cannot run is the caller's error."""
    from ..errors import PrefpilotError
    full = not (Path(model_dir) / "adapter_config.json").is_file()
    usable = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available() and full
    if engine == "vllm" and not usable:
        why = ("vllm is not installed (pip install vllm)" if importlib.util.find_spec("vllm") is None else
               "no GPU is visible" if not torch.cuda.is_available() else f"{model_dir} is a LoRA adapter")
        raise PrefpilotError(f"engine vllm: {why}; use --engine transformers (or auto)", code="usage")
    return "vllm" if engine == "vllm" or (engine == "auto" and usable) else "transformers"


def generate_vllm(model_dir, tok, prompts: list[list[int]], max_new_tokens: int) -> list[dict]:
    """Greedy completions by vLLM (GPU; optional extra), in the same shape as ``generate``: the engine loads the
    saved folder itself, so the result is the saved model's, with the same token ids in."""
    from vllm import LLM, SamplingParams
    llm = LLM(model=str(model_dir), tokenizer=str(model_dir), seed=0, gpu_memory_utilization=0.4)
    try:
        outs = llm.generate([{"prompt_token_ids": list(p)} for p in prompts],
                            SamplingParams(temperature=0.0, max_tokens=max_new_tokens), use_tqdm=False)
    finally:
        del llm  # its KV cache holds GPU memory the scoring passes need
        torch.cuda.empty_cache()
    eos, res = tok.eos_token_id, []
    for o in outs:
        ids = list(o.outputs[0].token_ids)
        hit = o.outputs[0].finish_reason == "stop" or eos in ids
        toks = ids[:ids.index(eos)] if eos in ids else ids
        res.append({"tokens": toks, "eos": hit, "text": tok.decode(toks, skip_special_tokens=True)})
    return res


def generation_checks(policy, reference, tok, prompts: list[list[int]], max_new_tokens: int,
                      max_length: int | None, reference_samples: list[dict] | None = None,
                      policy_samples: list[dict] | None = None) -> tuple[dict, list[dict]]:
    """Policy and reference completions side by side, their rates, and the KL estimate on the policy's outputs
    (``reference_samples``/``policy_samples``: completions already generated, by vLLM or for several
    checkpoints)."""
    pol = policy_samples if policy_samples is not None else generate(policy, tok, prompts, max_new_tokens)
    ref = reference_samples if reference_samples is not None else generate(reference, tok, prompts, max_new_tokens)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    seqs = [(p, s["tokens"]) for p, s in zip(prompts, pol) if s["tokens"]]
    kl = []
    if seqs:
        _, _, lp_pol = sequence_logps(policy, seqs, pad, None)
        _, _, lp_ref = sequence_logps(reference, seqs, pad, None)
        kl = [a - b for x, y in zip(lp_pol, lp_ref) for a, b in zip(x, y)]
    summary = compare_generations(generation_summary(pol, max_new_tokens), generation_summary(ref, max_new_tokens), kl)
    samples = [{"prompt": tok.decode(p, skip_special_tokens=False), "reference": r["text"], "policy": s["text"],
                "policy_tokens": len(s["tokens"]), "policy_eos": s["eos"], "reference_tokens": len(r["tokens"]),
                "reference_eos": r["eos"]} for p, s, r in zip(prompts, pol, ref)]
    return summary, samples
