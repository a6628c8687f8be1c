"""Judge preference data before training: `prefpilot data check` / `data convert`, MCP `check_dataset`.

One streaming pass reads the rows (bounded memory: hashes and counts, plus the rows a model-side check needs,
capped at ``max_rows``), detects the layout (layouts.py), maps foreign layouts to TRL's, and collects the row
findings (rows.py). With a model, the rows are tokenized as TRL will (model.py: truncation, prompts that fill
max_length, a missing chat template, length bias in tokens); with ``score``, the reference model scores every
pair and its log-probs are cached for training to reuse (refcache.py). No torch unless a model is given.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import PrefpilotError
from ..train.data import iter_rows as _iter_rows
from . import layouts
from .rows import RowStats

DEFAULT_MAX_ROWS = 1000  # rows kept for the model-side checks and scoring (the row checks see every row)
SAMPLE = 200  # rows the layout is detected from


def source_of(data: str, root: Path | None = None) -> tuple[str, Path | None]:
    """(label, local file or None for a hub id) of DATA: a path, builtin:<name> (its train split) or a hub id."""
    if data.startswith("builtin:"):
        from ..data import builtin_files
        return data, builtin_files(data[8:])["train"]
    p = Path(data).expanduser()
    if root is not None and not p.is_absolute():
        p = root / p
    if p.exists():
        if not p.is_file():
            raise PrefpilotError(f"{data}: not a regular file; give a .jsonl, .json, .csv or .parquet file",
                                 code="bad_data", path="/data")
        return str(p), p
    from ..plan import hub_dataset_id
    if hub_dataset_id(data, root):
        return data, None  # owner/name: a hub dataset, read from the local datasets cache
    raise PrefpilotError(f"dataset file {data} does not exist", code="dataset_not_found", path="/data")


def iter_rows(path: Path):
    """Rows of a local file one at a time (the reader train and validate use; errors point at ``/data``)."""
    return _iter_rows(path, field="/data")


def _hub_rows(name: str, split: str = "train"):
    try:
        from datasets import load_dataset
        ds = load_dataset(name, split=split)
    except Exception as exc:  # not in the local cache, offline: one line, not a hub traceback
        raise PrefpilotError(f"dataset {name!r} is neither a local file nor in the local datasets cache "
                             f"({type(exc).__name__}); download it once (datasets.load_dataset) or pass a file",
                             code="dataset_not_found", path="/data") from None
    yield from ds


def _parse_mapping(spec) -> dict:
    if not spec:
        return {}
    if isinstance(spec, dict):
        m = spec
    else:
        m = {}
        for part in str(spec).split(","):
            if "=" not in part:
                raise PrefpilotError(f"--map {spec!r}: write prompt=COLUMN,chosen=COLUMN,rejected=COLUMN",
                                     code="usage", path="/map")
            k, v = part.split("=", 1)
            m[k.strip()] = v.strip()
    bad = sorted(set(m) - {"prompt", "chosen", "rejected", "completion", "label"})
    if bad:
        raise PrefpilotError(f"--map: {', '.join(bad)} is not a TRL column (prompt, chosen, rejected, completion, "
                             "label)", code="usage", path="/map")
    return m


def _plan_of(config: dict | None) -> dict | None:
    """The batch and steps a config plans (TRL's defaults where unset), for few_pairs."""
    if config is None:
        return None
    hw = config.get("hardware") if isinstance(config.get("hardware"), dict) else {}
    world = int(hw.get("num_gpus") or 1) if not config.get("use_cpu") else 1
    batch = int(config.get("per_device_train_batch_size") or 8) * int(config.get("gradient_accumulation_steps") or 1)
    return {"effective_batch": batch * max(1, world), "epochs": float(config.get("num_train_epochs") or 3),
            "max_steps": int(config.get("max_steps") or -1)}


def _rows(data: str, root: Path | None):
    label, path = source_of(data, root)
    return label, (iter_rows(path) if path is not None else _hub_rows(label))


def check_data(data: str, *, config: dict | None = None, model: str | None = None, max_length: int | None = None,
               score: bool = False, mapping=None, max_rows: int = DEFAULT_MAX_ROWS, root: Path | None = None,
               progress=None, out_dir: Path | None = None, read_limit: int | None = None,
               tokenize: bool = True) -> dict:
    """The report of ``data``: format, rows, findings (and the reference's view with ``score``).
    ``read_limit``: read only the first rows (validate's sample); the report says ``sampled``. ``tokenize=False``
    keeps to the row checks even when the config names a model (validate: no transformers on a light path)."""
    mapping = _parse_mapping(mapping)
    label, it = _rows(data, root)
    head, stats, kept, columns = [], RowStats(), [], set()
    layout, unfit, sampled = None, [], False
    for n, row in enumerate(it, 1):
        if read_limit is not None and n > read_limit:
            sampled = True
            break
        if layout is None:
            head.append(row)
            if len(head) < SAMPLE:
                continue
            layout, counts = _decide(head, mapping)
            for m, r in enumerate(head, 1):
                _take(m, r, layout, mapping, stats, kept, unfit, columns, max_rows)
            continue
        _take(n, row, layout, mapping, stats, kept, unfit, columns, max_rows)
        if progress and n % 10000 == 0:
            progress(n, None, "rows read")
    if layout is None:
        if not head:
            raise PrefpilotError(f"{label}: no rows", code="bad_data", path="/data")
        layout, counts = _decide(head, mapping)
        for m, r in enumerate(head, 1):
            _take(m, r, layout, mapping, stats, kept, unfit, columns, max_rows)
    else:
        counts = layouts.detect(head)[1]
    report = {"data": label, "format": layout, "trl_format": layouts.trl_layout(layout) if layout != "unknown"
              else None, "layouts_seen": counts, "rows": stats.rows, "usable_pairs": stats.usable,
              "columns": sorted(columns)[:40], "mapping": mapping or None, "sampled": sampled, "findings": []}
    findings = report["findings"]
    if layout == "unknown" or unfit:
        findings.append(_missing_columns(layout, unfit, columns, stats.rows))
    if layout == "hh_rlhf":
        moved = stats.counts.get("hh_split", 0)
        findings.append({"id": "foreign_layout", "severity": "warning" if moved else "info",
                         "rows": stats.hits.get("hh_split", []), "count": moved,
                         "explanation": "Anthropic HH transcripts: TRL reads them as an implicit prompt, cut at the "
                                        f"first character where chosen and rejected differ; in {moved} of "
                                        f"{stats.rows} rows both answers start alike, so that cut moves their first "
                                        "words into the prompt and the pair is judged on the rest",
                         "remedy": f"prefpilot data convert {data} --out FILE.jsonl (cuts the prompt after the last "
                                   "shared 'Assistant:' turn)"})
    elif layout in layouts.FOREIGN_LAYOUTS:
        findings.append({"id": "foreign_layout", "severity": "warning", "rows": [], "count": stats.rows,
                         "explanation": f"{layout} layout: TRL does not read it as it is",
                         "remedy": f"prefpilot data convert {data} --out FILE.jsonl (maps it to TRL's "
                                   f"{layouts.trl_layout(layout)} layout)"})
    if layouts.trl_layout(layout) == "unpaired":
        findings.append({"id": "unpaired", "severity": "info", "rows": [], "count": stats.rows,
                         "explanation": f"unpaired rows (prompt, completion, label): {stats.labels[True]} desirable "
                                        f"and {stats.labels[False]} undesirable; KTO trains on them, DPO and SimPO "
                                        "need pairs", "remedy": "train KTO, or pair the rows per prompt for DPO"})
    length = None
    model_path = model or (config or {}).get("model_name_or_path")
    paired = [(n, r) for n, r in kept if "chosen" in r]
    if model_path and paired and tokenize:
        length = _model_side(report, paired, model_path, config, max_length, score, progress, out_dir, stats)
    findings.extend(stats.findings(None if sampled else _plan_of(config), length))
    report["length"] = length or stats.length()
    order = {"error": 0, "warning": 1, "info": 2}
    findings.sort(key=lambda f: order[f["severity"]])
    report["verdict"] = ("problems" if any(f["severity"] in ("error", "warning") for f in findings) else "clean")
    report["summary"] = (f"{label}: {layout} layout, {stats.rows} rows, {stats.usable} usable; "
                         + ("; ".join(f"{f['id']} ({f['severity']})" for f in findings if f["severity"] != "info")
                            or "no problems found"))
    return report


def _decide(head: list, mapping: dict) -> tuple[str, dict]:
    if mapping:
        mapped = [{**r, **{k: r[v] for k, v in mapping.items() if v in r}} if isinstance(r, dict) else r for r in head]
        return layouts.detect(mapped)
    return layouts.detect(head)


def _take(n, row, layout, mapping, stats, kept, unfit, columns, max_rows):
    if isinstance(row, dict) and len(columns) < 200:
        columns.update(map(str, row))
    if layout == "unknown":
        stats.rows += 1
        return
    try:
        trl = layouts.to_trl(row, layout, mapping)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        stats.rows += 1
        if len(unfit) < 5:
            unfit.append((n, f"{type(exc).__name__}: {exc}"[:120]))
        else:
            unfit.append((n, None))
        return
    stats.add(n, trl)
    if isinstance(row, dict):
        stats.scores(n, row)
    if layout == "hh_rlhf" and layouts.trl_split_differs(row):
        stats._hit("hh_split", n)
    if len(kept) < max_rows:
        kept.append((n, trl))


def _missing_columns(layout, unfit, columns, rows) -> dict:
    suggestion = layouts.suggest_mapping(columns)
    if layout == "unknown":
        why = (f"no preference layout found: the rows have {', '.join(sorted(columns)[:10]) or 'no columns'}; TRL "
               "reads prompt/chosen/rejected (strings or messages), or chosen/rejected alone")
    else:
        shown = "; ".join(f"row {n}: {w}" for n, w in unfit if w)
        why = f"{len(unfit)} of {rows} rows do not fit the {layout} layout ({shown})"
    remedy = ("prefpilot data convert DATA --out FILE.jsonl --map "
              + ",".join(f"{k}={v}" for k, v in suggestion.items()) if suggestion else
              "rename the columns to prompt/chosen/rejected, or pass --map prompt=COL,chosen=COL,rejected=COL")
    return {"id": "missing_columns", "severity": "error", "rows": [n for n, _ in unfit[:5]],
            "count": len(unfit) if layout != "unknown" else rows, "explanation": why, "remedy": remedy,
            "mapping": suggestion or None}


def _model_side(report, paired, model_path, config, max_length, score, progress, out_dir, stats):
    """Tokenizer checks, and with ``score`` the reference's view; returns token length statistics."""
    from ..train.models import resolve_model
    from . import model as side
    from . import refcache
    path, _ = resolve_model(model_path)
    max_length = int(max_length or (config or {}).get("max_length") or 1024)  # DPOConfig's default
    tok = side.load_tokenizer(path)
    found, extra = side.token_findings(paired, tok, max_length, progress)
    report["findings"].extend(found)
    report["tokens"] = {"model": model_path, "max_length": max_length, **extra.get("stats", {})}
    length = None
    if extra.get("lengths"):
        tstats = RowStats()
        for c, r in extra["lengths"]:
            tstats.measure(c, r)
        length = tstats.length("tokens")
    if score and not any(f["id"] == "no_chat_template" for f in found):
        s = side.score(paired, path, tok, max_length, progress)
        report["findings"].append(side.score_finding(s))
        fp = refcache.fingerprint(path, max_length)
        cache = refcache.write(fp, [r for _, r in paired], s["_chosen"], s["_rejected"]) if fp else None
        report["score"] = {k: v for k, v in s.items() if not k.startswith("_")}
        report["score"]["reference_cache"] = str(cache) if cache else None
        report["score"]["training_reuse"] = (
            f"`precompute_ref_log_probs: true` with this model and max_length reuses these {s['pairs']} pairs' "
            f"reference log-probs: TRL's precompute pass (about {s['seconds']} s here) is skipped"
            if cache else "the model is not a local folder: nothing cached for training")
        if out_dir is not None:
            from ..evaluation.run import plot_margins
            out_dir.mkdir(parents=True, exist_ok=True)
            png = plot_margins({"summed": s["_summed"], "per_token": s["_per_token"]}, None,
                               out_dir / "reference-margins.png", title=f"{report['data']}: reference margins")
            report["score"]["histogram"] = str(png)
    return length


def convert_data(data: str, out: str, *, mapping=None, root: Path | None = None, overwrite: bool = False) -> dict:
    """Write ``data`` as TRL-ready JSONL at ``out`` (row order kept; rows that do not convert are listed)."""
    mapping = _parse_mapping(mapping)
    label, it = _rows(data, root)
    dest = Path(out).expanduser()
    if root is not None and not dest.is_absolute():
        dest = root / dest
    if dest.exists() and not overwrite:
        raise PrefpilotError(f"{dest} exists; choose another --out or pass --force", code="exists", path="/out")
    src = source_of(data, root)[1]
    if src is not None and dest.resolve() == src.resolve():
        raise PrefpilotError("--out is the input file: write the converted rows elsewhere", code="usage",
                             path="/out")
    rows = iter(it)
    head = []
    for row in rows:
        head.append(row)
        if len(head) >= SAMPLE:
            break
    if not head:
        raise PrefpilotError(f"{label}: no rows", code="bad_data", path="/data")
    layout, _ = _decide(head, mapping)
    if layout == "unknown":
        f = _missing_columns("unknown", [], {str(k) for r in head if isinstance(r, dict) for k in r}, len(head))
        raise PrefpilotError(f"{label}: {f['explanation']}. {f['remedy']}", code="bad_data", path="/data")
    tmp = dest.with_name(dest.name + ".part")
    written, skipped = 0, []
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as fh:
        for n, row in enumerate(_chain(head, rows), 1):
            try:
                trl = layouts.to_trl(row, layout, mapping)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                skipped.append({"row": n, "problem": f"{type(exc).__name__}: {exc}"[:120]})
                continue
            fh.write(json.dumps(trl, ensure_ascii=False) + "\n")
            written += 1
    tmp.replace(dest)  # whole file or nothing: a crash leaves only the .part
    return {"data": label, "out": str(dest), "from": layout, "to": layouts.trl_layout(layout), "rows": written,
            "skipped": len(skipped), "skipped_rows": skipped[:10], "mapping": mapping or None,
            "mapped": _what_mapped(layout, mapping)}


def _chain(head, rest):
    yield from head
    yield from rest


def _what_mapped(layout: str, mapping: dict) -> str:
    if mapping:
        return "columns renamed: " + ", ".join(f"{v} -> {k}" for k, v in mapping.items())
    return {
        "sharegpt": "conversations -> prompt messages (human->user, gpt->assistant, system kept); chosen/rejected "
                    "{from, value} -> one assistant message each",
        "ultrafeedback": "the turns chosen and rejected share -> prompt; the rest of each -> chosen/rejected; "
                         "prompt string, prompt_id, messages and scores dropped",
        "hh_rlhf": "transcript cut after the last shared '\\n\\nAssistant:' -> prompt; the answers -> "
                   "chosen/rejected",
        "alpaca": "instruction (+ input) -> prompt (messages when system/history are set)",
        "kto_messages": "messages[:-1] -> prompt, the last message -> completion, label kept",
        "implicit_prompt": "the shared prefix -> prompt (TRL's own rule)",
    }.get(layout, "columns kept as they are (already a TRL layout); other columns dropped")
