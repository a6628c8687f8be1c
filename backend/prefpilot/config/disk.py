"""Disk a run's checkpoints will take, from arithmetic only (light: no torch).

A Trainer checkpoint holds the trained weights (in the dtype they were loaded in; a LoRA run saves only the
adapter, in fp32), the optimizer state (`optimizer.pt`: AdamW keeps two fp32 moments per trainable parameter,
8 bytes), the tokenizer files and a few small files (scheduler, RNG states, trainer_state.json, training_args.bin).
A full-weight SmolLM2-135M run in fp32 writes ~1.6 GB per checkpoint: 0.54 GB of weights and 1.08 GB of
AdamW state. How many are kept at once is `save_total_limit` (all of them by default); the final model adds
one more copy of the weights without optimizer state.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

from .estimate import DTYPE_BYTES, GB, OPTIMIZER_BYTES, lora_trainable, resolve_model_size, _arch_guess

SMALL_FILES = 1e5          # scheduler.pt, rng_state.pth, trainer_state.json, training_args.bin, config.json
TOKENIZER_GUESS = 2e7      # a hub model's tokenizer files (Llama 3's tokenizer.json is ~9 MB), when not on disk
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "chat_template.jinja", "added_tokens.json")


def _tokenizer_bytes(model: str | None) -> float:
    p = Path(str(model or "")).expanduser()
    try:
        if p.is_dir():
            return float(sum((p / f).stat().st_size for f in TOKENIZER_FILES if (p / f).is_file()))
    except OSError:
        pass
    return TOKENIZER_GUESS


def checkpoint_count(config: dict) -> int | None:
    """Checkpoints written over the run, when the config says (max_steps with step saves); None when unknown."""
    strategy = str(config.get("save_strategy", "steps"))
    if strategy == "no":
        return 0
    if strategy == "epoch":
        epochs = config.get("num_train_epochs", 3)
        return math.ceil(epochs) if isinstance(epochs, (int, float)) and epochs > 0 else None
    steps = config.get("max_steps")
    every = config.get("save_steps", 500)
    if not isinstance(steps, int) or steps <= 0 or not isinstance(every, (int, float)) or every <= 0:
        return None
    every = every * steps if every < 1 else every  # a float below 1 is a fraction of the run
    return math.ceil(steps / every)  # one every save_steps, and one at the last step


def estimate_disk(config: dict, free_dir: str | Path | None = None, load_dtype: str | None = None) -> dict:
    """Bytes per checkpoint, checkpoints kept at once, the run's peak and the free space where it writes.

    ``load_dtype``: the dtype the memory estimate chose (bf16 on a GPU that has it) when the config sets none."""
    size = resolve_model_size(config)
    if size["params"] is None:
        return {"known": False, "reason": size["source"]}
    P = size["params"]
    peft = bool(config.get("use_peft"))
    wbytes = DTYPE_BYTES.get(config.get("dtype") or load_dtype, 4)
    arch = {**_arch_guess(P), **size["arch"]}
    trainable = lora_trainable(P, arch, int(config.get("lora_r", 16)), config.get("lora_target_modules")) if peft else P
    optim = str(config.get("optim", "adamw_torch"))
    obytes = next((v for k, v in sorted(OPTIMIZER_BYTES.items(), key=lambda kv: -len(kv[0])) if k in optim), 8)
    weights = trainable * 4 if peft else P * wbytes
    per = weights + trainable * obytes + _tokenizer_bytes(config.get("model_name_or_path")) + SMALL_FILES
    written = checkpoint_count(config)
    limit = config.get("save_total_limit")
    limit = int(limit) if isinstance(limit, (int, float)) and limit > 0 else None
    if config.get("load_best_model_at_end") and limit:
        limit = max(limit, 2)  # the Trainer keeps the best one beside the newest
    kept = (min(written, limit) if limit else written) if written is not None else limit
    final = weights + _tokenizer_bytes(config.get("model_name_or_path"))
    out = {"known": True, "checkpoint_gb": round(per / GB, 3), "checkpoint_bytes": int(per), "checkpoints_written": written,
           "checkpoints_kept": kept, "save_total_limit": limit,
           "peak_gb": round((kept * per + final) / GB, 2) if kept is not None else None,
           "final_model_gb": round(final / GB, 3)}
    if free_dir is not None:
        out["free_gb"] = free_gb(free_dir)
    return out


def free_gb(folder: str | Path) -> float | None:
    """Free space of the file system ``folder`` would be created on (its nearest existing parent)."""
    p = Path(folder).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return round(shutil.disk_usage(p).free / GB, 2)
    except OSError:
        return None
