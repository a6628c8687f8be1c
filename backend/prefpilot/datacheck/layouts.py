"""Which layout a preference row is in, and the TRL row it maps to (pure Python: no torch, no TRL).

TRL's DPO/CPO trainers read three layouts; KTO reads a fourth:
  standard         {"prompt": str, "chosen": str, "rejected": str}
  conversational   the same three as lists of {"role", "content"} messages
  implicit_prompt  {"chosen", "rejected"} only: TRL takes their shared prefix as the prompt
  unpaired         {"prompt", "completion", "label": bool} (KTO; DPO cannot train on it)
Layouts users bring from other tools, which `prefpilot data convert` maps to one of the above:
  sharegpt         LLaMA-Factory's ranking data: "conversations" [{from, value}], "chosen"/"rejected" {from, value}
  ultrafeedback    "prompt" str and "chosen"/"rejected" full conversations that repeat the prompt turn
                   (HuggingFaceH4/ultrafeedback_binarized; scores and "messages" are dropped)
  hh_rlhf          implicit_prompt strings in Anthropic's "\\n\\nHuman: … \\n\\nAssistant: …" transcript form: the
                   prompt is cut at the last "Assistant:" turn, not at the first differing character as TRL does
                   (two answers that start with the same word would otherwise lose it to the prompt)
  alpaca           LLaMA-Factory's alpaca ranking data: "instruction", optional "input"/"system"/"history"
  kto_messages     LLaMA-Factory's KTO data: "messages" (the last one the completion) and a boolean "label"
"""
from __future__ import annotations

import json
from collections import Counter

TRL_LAYOUTS = ("standard", "conversational", "implicit_prompt", "unpaired")
FOREIGN_LAYOUTS = ("sharegpt", "ultrafeedback", "hh_rlhf", "alpaca", "kto_messages")
PAIRED = ("standard", "conversational", "implicit_prompt", "sharegpt", "ultrafeedback", "hh_rlhf", "alpaca")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "observation": "tool", "function_call": "assistant", "tool": "tool"}
HH_TURN = "\n\nAssistant:"

# Column names seen in public preference data, for the mapping a `missing_columns` finding proposes.
ALIASES = {
    "prompt": ("prompt", "question", "query", "instruction", "input", "context", "prompt_text", "history"),
    "chosen": ("chosen", "chosen_response", "response_chosen", "response_j", "better", "preferred", "winner",
               "good", "accepted", "positive", "chosen_text", "answer_chosen"),
    "rejected": ("rejected", "rejected_response", "response_rejected", "response_k", "worse", "dispreferred",
                 "loser", "bad", "negative", "rejected_text", "answer_rejected"),
}


def is_messages(v) -> bool:
    return (isinstance(v, list) and bool(v) and
            all(isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in v))


def _is_hh(text) -> bool:
    return isinstance(text, str) and "\n\nHuman:" in text and HH_TURN in text


def detect_row(row) -> str:
    """The layout of one row, or "unknown"."""
    if not isinstance(row, dict):
        return "unknown"
    keys = set(row)
    c, r = row.get("chosen"), row.get("rejected")
    if "conversations" in keys and isinstance(c, dict) and isinstance(r, dict):
        return "sharegpt"
    if {"messages", "label"} <= keys and "completion" not in keys:
        return "kto_messages"
    if {"prompt", "completion", "label"} <= keys:
        return "unpaired"
    if not ({"chosen", "rejected"} <= keys):
        return "unknown"
    if "instruction" in keys and "prompt" not in keys:
        return "alpaca"
    if "prompt" in keys:
        p = row["prompt"]
        if isinstance(p, str) and is_messages(c) and is_messages(r) and c[0].get("content") == p:
            return "ultrafeedback"
        if is_messages(p) and is_messages(c) and is_messages(r):
            return "conversational"
        return "standard"
    if _is_hh(c) and _is_hh(r):
        return "hh_rlhf"
    return "implicit_prompt"


def detect(rows: list) -> tuple[str, dict]:
    """The file's layout (the most common among ``rows``, a sample) and the count of each."""
    counts = Counter(detect_row(r) for r in rows)
    if not counts:
        return "unknown", {}
    return counts.most_common(1)[0][0], dict(counts)


def suggest_mapping(columns) -> dict:
    """{TRL column: this file's column} for the columns a file lacks, from ``ALIASES``."""
    cols = {str(c).lower(): str(c) for c in columns}
    out = {}
    for want, names in ALIASES.items():
        if want in cols:
            continue
        for n in names[1:]:
            if n in cols:
                out[want] = cols[n]
                break
    return out


def _common_prefix_split(chosen, rejected) -> tuple:
    """TRL's extract_prompt rule: the longest shared prefix (characters or messages) is the prompt, and a space
    before the first differing character goes with the completion."""
    idx = 0
    for idx in range(min(len(chosen), len(rejected))):
        if chosen[idx] != rejected[idx]:
            if chosen[idx - 1] == " ":
                idx -= 1
            break
    return chosen[:idx], chosen[idx:], rejected[idx:]


def _sharegpt_messages(turns, system=None) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    for t in turns or []:
        role = SHAREGPT_ROLES.get(str(t.get("from", t.get("role", ""))).lower())
        if role is None:
            raise ValueError(f"unknown ShareGPT speaker {t.get('from')!r}")
        msgs.append({"role": role, "content": t.get("value", t.get("content"))})
    return msgs


def _lf_content(content):
    """LLaMA-Factory v1 content blocks [{type: text, value}] as plain text."""
    if isinstance(content, list):
        return "".join(str(b.get("value", b.get("text", ""))) for b in content if isinstance(b, dict))
    return content


def to_trl(row: dict, layout: str, mapping: dict | None = None) -> dict:
    """The TRL row for ``row`` (in ``layout``); ``mapping`` renames columns first ({"prompt": "question", ...}).
    Raises ValueError with the reason when the row does not fit the layout."""
    if mapping:
        row = {**row, **{want: row[have] for want, have in mapping.items() if have in row}}
    if layout in ("standard", "conversational"):
        return {k: row[k] for k in ("prompt", "chosen", "rejected")}
    if layout == "unpaired":
        return {k: row[k] for k in ("prompt", "completion", "label")}
    if layout in ("implicit_prompt", "hh_rlhf"):
        c, r = row["chosen"], row["rejected"]
        prompt, c_rest, r_rest = _common_prefix_split(c, r)
        if layout == "hh_rlhf":
            cut = prompt.rfind(HH_TURN)
            if cut < 0:
                raise ValueError("no shared \"Assistant:\" turn before the answers differ")
            cut += len(HH_TURN)
            prompt, c_rest, r_rest = c[:cut], c[cut:], r[cut:]
        return {"prompt": prompt, "chosen": c_rest, "rejected": r_rest}
    if layout == "sharegpt":
        prompt = _sharegpt_messages(row["conversations"], row.get("system"))
        out = {"prompt": prompt}
        for k in ("chosen", "rejected"):
            out[k] = _sharegpt_messages([row[k]])
        return out
    if layout == "ultrafeedback":
        prompt, c_rest, r_rest = _common_prefix_split(row["chosen"], row["rejected"])
        if not prompt:
            raise ValueError("chosen and rejected share no prompt turn")
        return {"prompt": prompt, "chosen": c_rest, "rejected": r_rest}
    if layout == "alpaca":
        text = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        if not row.get("system") and not row.get("history"):
            return {"prompt": text, "chosen": row["chosen"], "rejected": row["rejected"]}
        msgs = [{"role": "system", "content": row["system"]}] if row.get("system") else []
        for q, a in row.get("history") or []:
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        msgs.append({"role": "user", "content": text})
        return {"prompt": msgs, "chosen": [{"role": "assistant", "content": row["chosen"]}],
                "rejected": [{"role": "assistant", "content": row["rejected"]}]}
    if layout == "kto_messages":
        msgs = [{"role": m["role"], "content": _lf_content(m["content"])} for m in row["messages"]]
        if len(msgs) < 2:
            raise ValueError("a KTO row needs a prompt turn and a completion turn")
        return {"prompt": msgs[:-1], "completion": msgs[-1:], "label": bool(row["label"])}
    raise ValueError(f"no conversion from layout {layout!r}")


def trl_split_differs(row: dict) -> bool:
    """For an hh_rlhf row: whether TRL's own split (first differing character) puts part of the answers into
    the prompt, i.e. differs from the cut at the last shared "Assistant:" turn."""
    prompt, _, _ = _common_prefix_split(row["chosen"], row["rejected"])
    return not prompt.rstrip().endswith(HH_TURN.strip())


def trl_layout(layout: str) -> str:
    """The TRL layout a converted row is in."""
    return {"sharegpt": "conversational", "ultrafeedback": "conversational", "hh_rlhf": "standard",
            "kto_messages": "unpaired", "alpaca": "standard"}.get(layout, layout)


def text_of(v) -> str:
    """Comparable text of a field: a string, or the contents of a message list."""
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        return "\n".join(str(m.get("content", "")) for m in v if isinstance(m, dict))
    return "" if v is None else json.dumps(v, sort_keys=True)


def unpair(row: dict) -> list[dict]:
    """A TRL paired row (standard, conversational or implicit prompt) as KTO's two unpaired rows, as TRL's
    `unpair_preference_dataset` documents it: {prompt, completion: chosen, label: True} and
    {prompt, completion: rejected, label: False}. An implicit prompt is split off first (TRL's extract_prompt)."""
    if "prompt" in row:
        prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    else:
        prompt, chosen, rejected = _common_prefix_split(row["chosen"], row["rejected"])
    return [{"prompt": prompt, "completion": chosen, "label": True},
            {"prompt": prompt, "completion": rejected, "label": False}]


def kto_rows(rows: list) -> tuple[list, int]:
    """Rows KTOTrainer reads: unpaired rows as they are, each paired row as its desirable row followed by its
    undesirable one. TRL's own unpairing puts all chosen rows of a 1000-row chunk before all rejected ones, so
    under KTO's sequential sampling most batches would hold one label; interleaved, every batch of two or more
    holds both. Returns (rows, number of pairs converted)."""
    out, pairs = [], 0
    for r in rows:
        if isinstance(r, dict) and "completion" in r and "label" in r:
            out.append(r)
        else:
            out += unpair(r)
            pairs += 1
    return out, pairs


def label_counts(rows: list) -> tuple[int, int]:
    """(desirable, undesirable) rows in KTO terms: a pair counts once on each side."""
    d = u = 0
    for r in rows:
        if isinstance(r, dict) and "label" in r and "completion" in r:
            d, u = (d + 1, u) if bool(r["label"]) else (d, u + 1)
        elif isinstance(r, dict) and "chosen" in r and "rejected" in r:
            d, u = d + 1, u + 1
    return d, u


def one_label_batches(rows: list, batch: int) -> tuple[int, int]:
    """(batches holding a single label, batches) when ``rows`` (unpaired) are read in order in batches of
    ``batch``, as KTO's sequential sampler reads them."""
    labels = [bool(r.get("label")) for r in rows if isinstance(r, dict) and "label" in r]
    chunks = [labels[i:i + batch] for i in range(0, len(labels) - batch + 1, batch)]
    return sum(1 for c in chunks if len(set(c)) == 1), len(chunks)
