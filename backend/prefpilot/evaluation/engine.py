"""The model side of an evaluation (imports torch): tokenize pairs as TRL does, score them, generate.

Pairs go through TRL's own DPO preparation (`DPOTrainer._prepare_dataset`: prompt extraction, the chat
template for conversational rows, EOS on completions, the completion split where prompt and prompt+completion
token ids diverge), so a held-out accuracy here means what TRL's rewards/accuracies means on those pairs.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import torch

from .. import rundir
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
                   batch_size: int = 32, first_tokens: list | None = None
                   ) -> tuple[list[float], list[int], list[list[float]]]:
    """Summed completion log-prob, completion length and per-token log-probs of (prompt, completion) pairs,
    truncated to ``max_length`` from the end as TRL's collator does (keep_start). ``first_tokens``, when a list
    is given, receives per sequence the greedy next token after the whole prompt (None where it was cut).

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
        for j, (p, full) in enumerate(chunk):
            toks = lp[j, len(p) - first:len(full) - first].tolist() if len(full) > len(p) else []
            i = idx[j]
            per_token[i], sums[i], lens[i] = toks, float(sum(toks)), len(toks)
            if first_tokens is not None and len(full) > len(p) >= first:
                first_tokens[i] = int(logits[j, len(p) - first].argmax())
        del logits
    return sums, lens, per_token


def pair_logps(model, pairs: list[dict], pad_id: int, max_length: int | None, packed: bool | None = None) -> dict:
    """Summed completion log-probs and lengths of each pair's chosen and rejected answers.

    ``packed`` (default: wherever it is known to give the plain results, see :func:`packing_ok`) scores each
    pair as one segment, prompt once then both answers, several pairs to a row: on a CPU a forward pass costs a
    fixed read of every weight plus a share per token, and packing halves the calls and drops the repeated prompt
    and the padding. The plain path scores (prompt + answer) sequences two per pair."""
    if packed is None:
        packed = packing_ok(model, pad_id)
    if packed:
        return packed_pair_logps(model, pairs, max_length)
    seqs = [(p["prompt_ids"], p[k]) for p in pairs for k in ("chosen_ids", "rejected_ids")]
    firsts = [None] * len(seqs)
    sums, lens, _ = sequence_logps(model, seqs, pad_id, max_length, first_tokens=firsts)
    return {"chosen": sums[0::2], "rejected": sums[1::2], "chosen_len": lens[0::2], "rejected_len": lens[1::2],
            "first": [a if a is not None else b for a, b in zip(firsts[0::2], firsts[1::2])]}


PACKING_VERSION = 1  # bump when packed_pair_logps changes: answers kept for an older version are not reused
PACKING_CHECKED: dict = {}  # kind of model (see _packing_key) -> whether packed scores match the plain ones
ROW_TOKENS = 256  # packed row length: attention over a row grows with its square, weight reads fall with fewer rows
PACKED_TOLERANCE = 1e-3  # nats per sequence between the packed and the plain scores for a model to be packed


def _packing_key(model) -> str:
    import transformers
    cfg = model.config
    return "|".join(str(x) for x in (PACKING_VERSION, type(model).__name__, getattr(cfg, "model_type", "?"),
                                     getattr(cfg, "_attn_implementation", "?"), transformers.__version__,
                                     torch.__version__))


def packing_ok(model, pad_id: int) -> bool:
    """Whether this kind of model scores packed pairs as it scores them one by one. Packing needs a causal LM
    that takes a 4D attention mask and position ids as given (transformers' Llama, Mistral, Qwen2 and GPT-2 pass
    the check here; others are checked where they first run). Rather than trust a list, each kind (class, model type, attention implementation, transformers
    and torch versions) is checked once on two short made-up pairs against the plain path; the answer is kept in
    prefpilot's cache folder, and a kind that fails or raises is scored the plain way."""
    key = _packing_key(model)
    if key in PACKING_CHECKED:
        return PACKING_CHECKED[key]
    from ..train.models import cache_dir
    store = cache_dir() / "packing.json"
    try:
        known = json.loads(store.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if isinstance(known.get(key), bool):
        PACKING_CHECKED[key] = known[key]
        return known[key]
    ok = False
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    if vocab >= 64:
        g = torch.Generator().manual_seed(0)
        toks = torch.randint(3, min(vocab, 32000), (26,), generator=g).tolist()
        probe = [{"prompt_ids": toks[:5], "chosen_ids": toks[5:9], "rejected_ids": toks[9:15]},
                 {"prompt_ids": toks[15:18], "chosen_ids": toks[18:24], "rejected_ids": toks[24:26]}]
        try:
            a = packed_pair_logps(model, probe, None)
            b = pair_logps(model, probe, pad_id, None, packed=False)
            ok = all(abs(x - y) <= PACKED_TOLERANCE for k in ("chosen", "rejected") for x, y in zip(a[k], b[k]))
        except Exception:  # an architecture that refuses a 4D mask or a tensor logits_to_keep: the plain path
            ok = False
    PACKING_CHECKED[key] = ok
    try:
        known[key] = ok
        store.parent.mkdir(parents=True, exist_ok=True)
        rundir.write_json_atomic(store, known)
    except OSError:
        pass  # a read-only cache: checked again next time
    return ok


def _cut(p: list[int], c: list[int], max_length: int | None) -> list[int]:
    """The completion tokens TRL's collator keeps of prompt + completion cut to ``max_length`` (keep_start)."""
    return c if not max_length else c[:max(0, max_length - len(p))]


def _packed_rows(pairs: list[dict], max_length: int | None) -> list[list[int]]:
    """Pairs placed into as many rows as ROW_TOKENS needs, evenly: each pair, longest first, goes to the row
    holding the fewest tokens so far (every row is padded to the longest, so 420 tokens make two rows of ~210,
    not one of 256 and one of 164). A pair longer than a row is a row of its own."""
    size = {i: len(p["prompt_ids"][:max_length] if max_length else p["prompt_ids"])
            + len(_cut(p["prompt_ids"], p["chosen_ids"], max_length))
            + len(_cut(p["prompt_ids"], p["rejected_ids"], max_length)) for i, p in enumerate(pairs)}
    order = sorted(size, key=lambda i: -size[i])
    alone = [[i] for i in order if size[i] >= ROW_TOKENS]
    rest = [i for i in order if size[i] < ROW_TOKENS]
    k = -(-sum(size[i] for i in rest) // ROW_TOKENS)
    rows, load = [[] for _ in range(k)], [0] * k
    for i in rest:
        j = min(range(k), key=load.__getitem__)
        rows[j].append(i)
        load[j] += size[i]
    return alone + rows


@torch.no_grad()
def packed_pair_logps(model, pairs: list[dict], max_length: int | None) -> dict:
    """:func:`pair_logps` with each pair packed as [prompt, chosen, rejected]: the rejected tokens attend to the
    prompt and to themselves, never to chosen, and their positions restart where chosen's did, so each answer is
    scored exactly as after its prompt alone. Rows go through the model in batches whose logits fit LOGIT_BUDGET;
    the LM head runs only at the positions that predict an answer token."""
    n = len(pairs)
    out = {"chosen": [0.0] * n, "rejected": [0.0] * n, "chosen_len": [0] * n, "rejected_len": [0] * n,
           "first": [None] * n}
    vocab = int(getattr(model.config, "vocab_size", 0) or 1)
    dtype = next(model.parameters()).dtype
    rows = _packed_rows(pairs, max_length)
    batch: list[list[int]] = []

    def run(batch):
        layout = []  # per row: [(pair, key, predictor positions, target positions)]
        ids_rows, pos_rows, spans, firsts = [], [], [], []
        for j_row, row in enumerate(batch):
            ids, pos, segs, items = [], [], [], []
            for i in row:
                p = pairs[i]["prompt_ids"]
                p = p[:max_length] if max_length else p
                c = _cut(pairs[i]["prompt_ids"], pairs[i]["chosen_ids"], max_length)
                r = _cut(pairs[i]["prompt_ids"], pairs[i]["rejected_ids"], max_length)
                s = len(ids)
                ids += p + c + r
                pos += list(range(len(p) + len(c))) + list(range(len(p), len(p) + len(r)))
                segs.append((s, len(p), len(c), len(r)))
                last_p = s + len(p) - 1
                c_at = list(range(s + len(p), s + len(p) + len(c)))
                r_at = list(range(s + len(p) + len(c), s + len(p) + len(c) + len(r)))
                items.append((i, "chosen", [last_p] + c_at[:-1] if c_at else [], c_at))
                items.append((i, "rejected", [last_p] + r_at[:-1] if r_at else [], r_at))
                if (c_at or r_at) and len(p) == len(pairs[i]["prompt_ids"]):  # the whole prompt: its next token
                    firsts.append((i, j_row, last_p))
            ids_rows.append(ids)
            pos_rows.append(pos)
            spans.append(segs)
            layout.append(items)
        width = max(len(x) for x in ids_rows)
        b = len(batch)
        ids = torch.zeros((b, width), dtype=torch.long)
        pos = torch.zeros((b, width), dtype=torch.long)
        allowed = torch.zeros((b, width, width), dtype=torch.bool)
        causal = torch.ones((width, width), dtype=torch.bool).tril()
        for j in range(b):
            ids[j, :len(ids_rows[j])] = torch.tensor(ids_rows[j])
            pos[j, :len(pos_rows[j])] = torch.tensor(pos_rows[j])
            for s, lp, lc, lr in spans[j]:
                e = s + lp + lc + lr
                allowed[j, s:e, s:e] = causal[:e - s, :e - s]
                allowed[j, s + lp + lc:e, s + lp:s + lp + lc] = False  # rejected never sees chosen
            allowed[j, len(ids_rows[j]):, :] = causal[len(ids_rows[j]):, :]  # padding: keep rows non-empty
        mask = torch.zeros((b, 1, width, width), dtype=dtype)
        mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)  # additive: eager adds it, sdpa takes it too
        keep = torch.zeros((b, width), dtype=torch.bool)
        for j, items in enumerate(layout):
            for _, _, pred, _ in items:
                keep[j, pred] = True
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits
        logits = logits.reshape(-1, logits.shape[-1]).float()  # (kept positions in row order, vocab)
        flat = keep.reshape(-1).nonzero().squeeze(-1).tolist()
        where = {f: k for k, f in enumerate(flat)}
        lse = torch.logsumexp(logits, -1)
        if firsts:  # greedy next token after each whole prompt: generation can skip a prompt answered by EOS
            top = logits[torch.tensor([where[j * width + lp] for _, j, lp in firsts])].argmax(-1).tolist()
            for (i, _, _), t in zip(firsts, top):
                out["first"][i] = int(t)
        # the last prompt position predicts both answers' first tokens: index (position, target) pairs, not positions
        at_pos, tgt, owner = [], [], []
        for j, items in enumerate(layout):
            for n_item, (_, _, pred, at) in enumerate(items):
                for pp, a in zip(pred, at):
                    at_pos.append(where[j * width + pp])
                    tgt.append(int(ids[j, a]))
                    owner.append((j, n_item))
        rows_i = torch.tensor(at_pos, dtype=torch.long)
        vals_all = (logits[rows_i, torch.tensor(tgt, dtype=torch.long)] - lse[rows_i]).tolist() if at_pos else []
        per: dict = {}
        for o, v in zip(owner, vals_all):
            per.setdefault(o, []).append(v)
        for j, items in enumerate(layout):
            for n_item, (i, key, pred, at) in enumerate(items):
                vals = per.get((j, n_item), [])
                out[key][i], out[key + "_len"][i] = float(sum(vals)), len(vals)

    for row in rows:
        # one kept logit per answer token; the (rows x width x width) mask stays small beside them
        kept = sum(len(_cut(pairs[i]["prompt_ids"], pairs[i][k], max_length))
                   for r in batch + [row] for i in r for k in ("chosen_ids", "rejected_ids"))
        if batch and (kept * vocab > LOGIT_BUDGET or len(batch) >= 32):
            run(batch)
            batch = []
        batch.append(row)
    if batch:
        run(batch)
    return out


@torch.no_grad()
def generate(model, tok, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 8,
             first: list | None = None) -> list[dict]:
    """Greedy completions, left-padded in batches: token ids (EOS and after cut), whether EOS came, text.

    ``first``: the greedy first token of each prompt where already known (the scoring pass computed the logits
    after every held-out prompt): a prompt whose first token is EOS has the empty completion without a forward
    pass of its own."""
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    known = {i: {"tokens": [], "eos": True, "text": ""} for i, t in enumerate((first or [])[:len(prompts)])
             if eos is not None and t == eos}
    if known:
        todo = [i for i in range(len(prompts)) if i not in known]
        rest = dict(zip(todo, generate(model, tok, [prompts[i] for i in todo], max_new_tokens, batch_size)))
        return [known[i] if i in known else rest[i] for i in range(len(prompts))]
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
    checkpoints). ``reference``: the model, or a function that loads it (called only if it is needed)."""
    if not isinstance(reference, torch.nn.Module):
        load, reference = reference, None

        def ref_model():
            nonlocal reference
            reference = reference if reference is not None else load()
            return reference
    else:
        def ref_model():
            return reference
    pol = policy_samples if policy_samples is not None else generate(policy, tok, prompts, max_new_tokens)
    ref = reference_samples if reference_samples is not None else generate(ref_model(), tok, prompts, max_new_tokens)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    seqs = [(p, s["tokens"]) for p, s in zip(prompts, pol) if s["tokens"]]
    kl = []
    if seqs:
        _, _, lp_pol = sequence_logps(policy, seqs, pad, None)
        _, _, lp_ref = sequence_logps(ref_model(), seqs, pad, None)
        kl = [a - b for x, y in zip(lp_pol, lp_ref) for a, b in zip(x, y)]
    summary = compare_generations(generation_summary(pol, max_new_tokens), generation_summary(ref, max_new_tokens), kl)
    samples = [{"prompt": tok.decode(p, skip_special_tokens=False), "reference": r["text"], "policy": s["text"],
                "policy_tokens": len(s["tokens"]), "policy_eos": s["eos"], "reference_tokens": len(r["tokens"]),
                "reference_eos": r["eos"]} for p, s, r in zip(prompts, pol, ref)]
    return summary, samples
