"""The reference model's log-probs of each pair, kept so that training does not compute them again.

`prefpilot data check --score` writes them; `prefpilot train` with `precompute_ref_log_probs: true` reads
them when the key matches, and hands them to TRL's DPOTrainer as the `ref_chosen_logps`/`ref_rejected_logps`
columns its collator and loss already accept, instead of running TRL's own precompute pass.

The key is everything the values depend on: the model's weight and config files (name, size, mtime), the
tokenizer files and chat template (they sit in the same folder, or are named), max_length, and float32 (both
sides score in float32: a bf16/fp16 run computes its own). Each row is found by a hash of its
prompt/chosen/rejected, so a file with rows added or reordered still reuses what matches. Light: no torch.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

FILES = (".safetensors", ".bin", ".json", ".model", ".txt", ".jinja")


def _root() -> Path:
    from ..train.models import cache_dir
    return cache_dir() / "ref-logps"


def fingerprint(model_dir: str, max_length: int | None) -> str | None:
    """The key of a local model folder at ``max_length``, or None (a hub id cannot be fingerprinted safely)."""
    d = Path(model_dir)
    if not d.is_dir():
        return None
    h = hashlib.sha256(json.dumps(["v1", max_length, "float32"]).encode())
    for f in sorted(d.iterdir()):
        if f.is_file() and f.suffix in FILES:
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def row_key(row: dict) -> str:
    return hashlib.blake2b(json.dumps([row.get("prompt"), row.get("chosen"), row.get("rejected")],
                                      sort_keys=True, ensure_ascii=False).encode(), digest_size=12).hexdigest()


def path_for(fp: str) -> Path:
    return _root() / f"{fp}.jsonl"


def write(fp: str, rows: list[dict], chosen: list[float], rejected: list[float]) -> Path:
    """Append these rows' values (atomic per line; a later duplicate key wins when read)."""
    p = path_for(fp)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a", encoding="utf-8") as fh:
        for row, c, r in zip(rows, chosen, rejected):
            fh.write(json.dumps({"k": row_key(row), "c": c, "r": r}) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return p


def lookup(fp: str | None, rows: list[dict]) -> tuple[list[float], list[float]] | None:
    """(chosen, rejected) reference log-probs for every row, or None when any row is missing."""
    if fp is None or not path_for(fp).is_file():
        return None
    table = {}
    with open(path_for(fp), encoding="utf-8") as fh:
        for line in fh:
            try:
                e = json.loads(line)
                table[e["k"]] = (float(e["c"]), float(e["r"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by a crash: its row is simply not cached
    vals = [table.get(row_key(r)) for r in rows]
    if not vals or any(v is None for v in vals):
        return None
    return [v[0] for v in vals], [v[1] for v in vals]
