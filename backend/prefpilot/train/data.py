"""Load preference data and check every row before any model is loaded.

Formats (as TRL's DPOTrainer takes them):
  standard        {"prompt": str, "chosen": str, "rejected": str}
  conversational  {"prompt": [messages], "chosen": [messages], "rejected": [messages]}
  implicit prompt {"chosen": str|[messages], "rejected": str|[messages]} (the shared prefix is the prompt)
Row checks are pure Python over plain dicts, so they run (and fail) in milliseconds.
"""
from __future__ import annotations

import csv
import json
from itertools import islice
from pathlib import Path

from ..errors import PrefpilotError

MAX_LISTED = 10


def iter_rows(path, field: str = "/dataset_path"):
    """Rows of a local .jsonl/.json/.csv/.parquet file as dicts, one at a time (JSONL, CSV and Parquet stream; a
    JSON list is read whole). Errors name the file and, in ``field``, the config key or argument that gave it."""
    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    try:
        if suffix == ".jsonl":
            with open(p, encoding="utf-8") as fh:
                for i, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            yield json.loads(line)
                        except json.JSONDecodeError as exc:
                            raise PrefpilotError(f"{p}: line {i} is not valid JSON ({exc.msg}); fix or remove it",
                                                 code="bad_data", path=field) from None
        elif suffix == ".json":
            data = json.loads(p.read_text(encoding="utf-8"))
            if isinstance(data, dict):  # {"train": [...]} or {"data": [...]}
                data = data.get("train") or data.get("data") or data
            if not isinstance(data, list):
                raise PrefpilotError(f"{p}: expected a JSON list of rows (or {{\"train\": [...]}})", code="bad_data",
                                     path=field)
            yield from data
        elif suffix == ".csv":
            with open(p, encoding="utf-8", newline="") as fh:
                yield from csv.DictReader(fh)
        elif suffix == ".parquet":
            import pyarrow.parquet as pq
            for batch in pq.ParquetFile(p).iter_batches(batch_size=1024):
                yield from batch.to_pylist()
        else:
            raise PrefpilotError(f"{p}: unsupported file type {suffix!r}; use .jsonl, .json, .csv or .parquet",
                                 code="dataset_format", path=field)
    except FileNotFoundError:
        raise PrefpilotError(f"dataset file {p} does not exist", code="dataset_not_found", path=field) from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, PrefpilotError):
            raise
        raise PrefpilotError(f"{p}: cannot read ({exc})", code="bad_data", path=field) from None


def read_rows(path: str, limit: int | None = None) -> list[dict]:
    """Rows of a local data file as a list (the first ``limit`` only, read without the rest: what validate
    samples)."""
    return list(islice(iter_rows(path), limit))


def _text(v) -> str | None:
    """The comparable text of a field (a string, or a list of messages); None when malformed."""
    if isinstance(v, str):
        return v
    if isinstance(v, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str) and
                                   isinstance(m.get("role"), str) for m in v):
        return "\x00".join(f"{m['role']}:{m['content']}" for m in v)
    return None


def _unpaired_problem(row: dict) -> str | None:
    """KTO's unpaired row {prompt, completion, label: bool}."""
    for k in ("prompt", "completion"):
        t = _text(row[k]) if row.get(k) is not None else None
        if t is None:
            return f"`{k}` is neither a string nor a list of {{role, content}} messages"
        if not t.strip():
            return f"`{k}` is empty"
    if not isinstance(row["label"], bool):
        return f"`label` must be true or false, got {str(row['label'])[:20]!r}"
    if isinstance(row["prompt"], str) != isinstance(row["completion"], str):
        return "prompt and completion mix plain text and messages"
    return None


def row_problem(row, unpaired_ok: bool = False) -> str | None:
    """Why a row cannot be trained on, or None. ``unpaired_ok`` (KTO) also takes {prompt, completion, label}."""
    if not isinstance(row, dict):
        return "not an object"
    if "completion" in row and "label" in row and "chosen" not in row:
        if unpaired_ok:
            return _unpaired_problem(row)
        return ("an unpaired row {prompt, completion, label}: only method: kto trains on it (DPO, SimPO and ORPO "
                "need chosen/rejected pairs)")
    keys = ("prompt", "chosen", "rejected") if "prompt" in row else ("chosen", "rejected")
    for k in ("chosen", "rejected"):
        if k not in row or row[k] is None:
            return f"missing `{k}`"
    texts = {}
    for k in keys:
        t = _text(row[k])
        if t is None:
            return f"`{k}` is neither a string nor a list of {{role, content}} messages"
        if not t.strip():
            return f"`{k}` is empty"
        texts[k] = t
    if texts["chosen"] == texts["rejected"]:
        return "chosen == rejected (no preference to learn)"
    if "prompt" in row and isinstance(row["prompt"], str) != isinstance(row["chosen"], str):
        return "prompt and chosen mix plain text and messages"
    return None


def check_rows(rows: list, source: str, max_bad_rows: int = 0, unpaired_ok: bool = False) -> tuple[list, dict]:
    """Return (good rows, report). Raises with the first offending row numbers when bad rows exceed the allowance."""
    bad = [(i, prob) for i, r in enumerate(rows, 1) if (prob := row_problem(r, unpaired_ok))]
    report = {"rows": len(rows), "bad_rows": len(bad), "dropped": 0,
              "examples": [{"row": i, "problem": p} for i, p in bad[:MAX_LISTED]]}
    if not rows:
        raise PrefpilotError(f"{source}: no rows", code="bad_data", path="/dataset_path")
    if len(bad) == len(rows):  # whatever --max-bad-rows allows, a run with nothing to train on must not start
        raise PrefpilotError(f"{source}: none of the {len(rows)} rows is usable ({bad[0][1]} in row {bad[0][0]}"
                             f"{_columns_hint(rows)}): nothing to train on", code="bad_data", path="/dataset_path")
    if len(bad) > max_bad_rows:
        listed = "; ".join(f"row {i}: {p}" for i, p in bad[:MAX_LISTED])
        raise PrefpilotError(f"{source}: {len(bad)} of {len(rows)} rows are unusable ({listed}"
                             f"{' …' if len(bad) > MAX_LISTED else ''}). Fix them, or allow dropping them with "
                             f"--max-bad-rows {len(bad)}", code="bad_data", path="/dataset_path")
    bad_idx = {i for i, _ in bad}
    good = [r for i, r in enumerate(rows, 1) if i not in bad_idx]
    report["dropped"] = len(bad)
    return good, report


def _columns_hint(rows: list) -> str:
    """The columns the rows do have, when they are not TRL's: what the user has to map."""
    cols = sorted({str(k) for r in rows[:50] if isinstance(r, dict) for k in r})
    if not cols or {"chosen", "rejected"} <= set(cols):
        return ""
    return (f"; the rows have {', '.join(cols[:8])}{' …' if len(cols) > 8 else ''}, and TRL reads prompt/chosen/"
            "rejected (strings or lists of {role, content} messages): rename or convert the columns")


def sample_problem(path: str, n: int = 1000, method: str = "dpo") -> str | None:
    """For validate: None when the first ``n`` rows of a local file hold at least one usable pair, else why not."""
    try:
        rows = read_rows(path, limit=n) if Path(path).suffix.lower() in (".jsonl", ".csv") else read_rows(path)
        check_rows(rows, str(path), max_bad_rows=len(rows), unpaired_ok=method == "kto")
    except PrefpilotError as exc:
        return str(exc)
    return None


def load_splits(cfg: dict, max_bad_rows: int = 0) -> tuple[list, list | None, dict]:
    """(train rows, eval rows or None, report) from dataset_path or dataset_name; checked."""
    dp, name = cfg.get("dataset_path"), cfg.get("dataset_name")
    if dp and dp.startswith("builtin:"):
        from ..data import builtin_files
        files = builtin_files(dp[8:])
        train_rows, test_rows = read_rows(str(files["train"])), read_rows(str(files["test"]))
        source = dp
    elif dp:
        train_rows, test_rows, source = read_rows(dp), None, dp
    elif name:
        try:
            from datasets import load_dataset
            ds = load_dataset(name, name=cfg.get("dataset_config"))
        except Exception as exc:  # the hub may be unreachable: say so plainly
            raise PrefpilotError(f"cannot load dataset {name!r} ({type(exc).__name__}: {str(exc)[:200]}); without "
                                 "network access use a local file via dataset_path", code="dataset_not_found",
                                 path="/dataset_name") from None
        train_rows = ds[cfg.get("dataset_train_split", "train")].to_list()
        split = cfg.get("dataset_test_split", "test")
        test_rows = ds[split].to_list() if split in ds else None
        source = name
    else:
        raise PrefpilotError("no dataset: set dataset_path or dataset_name", code="required", path="/dataset_path")
    kto = cfg.get("method") == "kto"
    train, rep = check_rows(train_rows, source, max_bad_rows, kto)
    test = None
    if test_rows:
        test, trep = check_rows(test_rows, source + " (test split)", max_bad_rows, kto)
        rep["test"] = trep
    return train, test, rep


def prompts_filling_max_length(rows: list, tokenizer, max_length: int) -> list[tuple[int, int]]:
    """(row number, prompt tokens) of rows whose prompt alone fills max_length.

    TRL's CPO trainer (SimPO) truncates the completion, never the prompt, so such a row keeps an empty completion
    and its average log-prob is 0/0: the loss is NaN from the first batch that holds it. Explicit prompts only:
    with an implicit prompt the shared prefix is found later by TRL.
    """
    from trl.data_utils import maybe_apply_chat_template

    out = []
    for i, row in enumerate(rows, 1):
        prompt = row.get("prompt")
        if prompt is None:
            continue
        text = maybe_apply_chat_template({"prompt": prompt}, tokenizer)["prompt"]
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"]) + (tokenizer.bos_token_id is not None)
        if n >= max_length:
            out.append((i, n))
    return out


def drop_overlong_simpo_prompts(rows: list, tokenizer, max_length: int, source: str, allowance: int) -> list:
    """Rows without the prompts that would leave SimPO an empty completion; raises when they exceed the allowance."""
    over = prompts_filling_max_length(rows, tokenizer, max_length)
    if not over:
        return rows
    longest = max(n for _, n in over)
    if len(over) > allowance:
        listed = ", ".join(f"row {i} ({n} tokens)" for i, n in over[:MAX_LISTED])
        raise PrefpilotError(
            f"{source}: {len(over)} of {len(rows)} prompts fill max_length={max_length} on their own ({listed}"
            f"{' …' if len(over) > MAX_LISTED else ''}). SimPO (TRL's CPO trainer) cuts the completion, not the prompt, "
            f"so these rows would have empty completions and a NaN loss. Raise max_length above {longest} plus the "
            f"answer length, shorten the prompts, or drop them with --max-bad-rows {len(over)}",
            code="bad_data", path="/max_length")
    drop = {i for i, _ in over}
    return [r for i, r in enumerate(rows, 1) if i not in drop]


AUTO_HOLDOUT = (200, 0.05, 64)  # auto: from 200 pairs up, 5% of them, at most 64


def holdout_split(rows: list, spec, seed: int = 42) -> tuple[list, list]:
    """(training rows, held-out rows) for `prefpilot eval` when the data has no test split: deterministic for a
    seed, so every rank and every resume sets aside the same pairs."""
    import random
    n = len(rows)
    if spec is None or spec == "auto":
        k = min(AUTO_HOLDOUT[2], round(AUTO_HOLDOUT[1] * n)) if n >= AUTO_HOLDOUT[0] else 0
    elif spec is False or spec == 0:
        k = 0
    elif isinstance(spec, float) and 0 < spec < 1:
        k = max(1, round(spec * n))
    else:
        k = int(spec)
    if k <= 0:
        return rows, []
    if k >= n:
        raise PrefpilotError(f"eval_holdout {spec} would set aside {k} of {n} pairs and leave none to train on; use a "
                             "smaller share or count, or false", code="bad_holdout", path="/eval_holdout")
    held = set(random.Random(seed).sample(range(n), k))
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]
