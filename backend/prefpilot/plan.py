"""Choose a complete, valid run config from the skills' published hyperparameter tables.

The nearest published row (same model family first, then closest size) gives β,
γ/β and the learning rate; batch, precision and memory savers come from the
hardware and the memory estimate. Every choice is explained in the rationale.
"""
from __future__ import annotations

import json
import math
import re
import stat
from pathlib import Path

from .config.estimate import estimate_memory, resolve_model_size
from .config.hardware import resolve_hardware
from .config.validate import validate
from .errors import PrefpilotError
from .hfcache import hf_cache_dir
from .skills import load_table

FAMILIES = ("llama", "mistral", "zephyr", "gemma", "qwen", "smollm", "phi")
PAPER_TOTAL_BATCH = 128  # SimPO paper/README; also the DPO baselines there
LORA_LR_FACTOR = 10      # LoRA DPO recipes use ~10x the full-parameter rate (alignment-handbook zephyr QLoRA: 5e-6 vs 5e-7)


def family_of(model: str) -> str | None:
    low = model.lower()
    for f in FAMILIES:
        if f in low:
            return "mistral" if f == "zephyr" else f
    return None


def variant_of(model: str) -> str:
    low = model.lower()
    return "instruct" if re.search(r"instruct|chat|-it\b|-it-", low) else "base"


def nearest_row(rows: list[dict], family: str | None, params: float | None, variant: str = "instruct") -> tuple[dict, str]:
    sized = [r for r in rows if r.get("params_b")]
    same = [r for r in sized if r["family"] == family]
    pool, why = (same, f"same family ({family})") if same else (sized, "no row for this family; nearest size")
    if params:
        best = min(pool, key=lambda r: (round(abs(math.log(r["params_b"] * 1e9 / params)), 1), r["variant"] != variant))
    else:
        best = min(pool, key=lambda r: r["variant"] != variant)
    return best, why


MAX_COUNT_BYTES = 1 << 30
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".tsv")


def hub_dataset_id(value: str | None, base: Path | None = None) -> bool:
    """An `org/name` that is no local path: a Hugging Face dataset id (TRL's dataset_name), not a dataset_path."""
    return bool(value and HUB_ID.match(value) and Path(value).suffix.lower() not in DATA_SUFFIXES
                and not ((base or Path.cwd()) / value).exists())


def _pick_split(splits: dict[str, int], split: str) -> tuple[str, int] | None:
    """The split asked for; else the one split whose name starts with it (train -> train_prefs)."""
    if split in splits:
        return split, splits[split]
    near = [s for s in splits if s.startswith(split)]
    return (near[0], splits[near[0]]) if len(near) == 1 else None


def hub_cached_pairs(repo_id: str, split: str = "train") -> tuple[int, str, str] | None:
    """Rows of a hub dataset's split when this machine already holds its metadata, without `datasets` or a
    network call: the `dataset_info.json` that `load_dataset` writes into its cache, else the split sizes in
    the dataset card's front matter in the hub cache (`dataset_info.splits`, written by the hub for most sets)."""
    import yaml
    found: list[tuple[dict[str, int], str]] = []
    ds_root = hf_cache_dir("datasets") / repo_id.replace("/", "___")
    for info in sorted(ds_root.glob("*/*/*/dataset_info.json")):
        try:
            splits = json.loads(info.read_text(encoding="utf-8")).get("splits") or {}
            found.append(({k: int(v["num_examples"]) for k, v in splits.items()}, f"the datasets cache ({info})"))
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            continue
    hub_root = hf_cache_dir("hub") / ("datasets--" + repo_id.replace("/", "--")) / "snapshots"
    for card in sorted(hub_root.glob("*/README.md")):
        try:
            text = card.read_text(encoding="utf-8")
            if not text.startswith("---"):
                continue
            meta = yaml.safe_load(text.split("---", 2)[1]) or {}
            info = meta.get("dataset_info") or {}
            if isinstance(info, list):  # one entry per config: the default one, else the first
                info = next((i for i in info if i.get("config_name") == "default"), info[0] if info else {})
            splits = {s["name"]: int(s["num_examples"]) for s in info.get("splits") or []}
            found.append((splits, f"the dataset card in the hub cache ({card})"))
        except (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError, yaml.YAMLError):
            continue
    for splits, where in found:
        picked = _pick_split(splits, split)
        if picked:
            return picked[1], f"counted {picked[1]} pairs in split {picked[0]} of {repo_id}, from {where}", picked[0]
    return None


def count_pairs(dataset_path: str | None) -> tuple[int | None, str, str | None]:
    """(number of preference pairs, how it was found, the hub split counted or None) for a builtin set, a local
    file or a hub set whose split sizes this machine has cached; (None, why, None) otherwise."""
    if not dataset_path:
        return None, "dataset size unknown (no dataset_path): the batch stays at the papers' 128", None
    if dataset_path.startswith("builtin:"):
        from .data import builtin_files, builtin_names
        if dataset_path[8:] not in builtin_names():
            return None, f"dataset size unknown ({dataset_path} is not a builtin set)", None
        p = builtin_files(dataset_path[8:])["train"]  # a packaged JSONL file, counted like any other
    else:
        p = Path(dataset_path).expanduser()
    if hub_dataset_id(dataset_path):
        cached = hub_cached_pairs(dataset_path)
        if cached:
            return cached
        return None, (f"dataset size unknown (the split sizes of the hub set {dataset_path} are not in this machine's "
                      "Hugging Face cache): the batch stays at the papers' 128"), None
    try:
        st = p.stat()
    except OSError:
        return None, f"dataset size unknown ({dataset_path} is not a local file)", None
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_COUNT_BYTES:
        return None, f"dataset size not counted ({dataset_path} is not a regular file under 1 GiB)", None
    detected = _detected_pairs(str(p), dataset_path)
    if detected is not None:
        return detected
    suffix = p.suffix.lower()
    try:
        if suffix == ".jsonl":
            n = sum(1 for line in open(p, encoding="utf-8", errors="replace") if line.strip())
        elif suffix == ".json":
            data = json.loads(p.read_text(encoding="utf-8"))
            n = len(data) if isinstance(data, list) else None
        elif suffix == ".csv":
            n = max(0, sum(1 for line in open(p, encoding="utf-8", errors="replace") if line.strip()) - 1)
        elif suffix == ".parquet":
            import pyarrow.parquet as pq  # only for parquet files
            n = pq.ParquetFile(p).metadata.num_rows
        else:
            n = None
    except (OSError, ValueError, RecursionError, ImportError):
        n = None
    if n is None:
        return None, f"dataset size not counted ({dataset_path}): the batch stays at the papers' 128", None
    return n, f"counted {n} pairs in {dataset_path}", None


def _detected_pairs(path: str, label: str) -> tuple[int | None, str, None] | None:
    """Usable pairs and layout by `prefpilot data check`'s row pass (no model), or None if it cannot read them."""
    from .datacheck import check_data
    try:
        rep = check_data(path, tokenize=False)
    except PrefpilotError:
        return None
    fmt, n = rep["format"], rep["usable_pairs"]
    if fmt == "unknown" or rep["trl_format"] == "unpaired":
        return None, (f"dataset size unknown ({label}: {fmt} rows, no preference pairs; `prefpilot data check "
                      f"{label}` says what to map)"), None
    skipped = rep["rows"] - n
    note = f"counted {n} usable pairs in {label} ({fmt} layout" + (
        f"; {skipped} of {rep['rows']} rows unusable: `prefpilot data check` lists them)" if skipped else ")")
    if fmt in ("sharegpt", "ultrafeedback", "alpaca"):
        note += f"; warning: TRL does not read the {fmt} layout: `prefpilot data convert {label} --out FILE.jsonl`"
    return n, note, None


MIN_MODEL_PARAMS = 1e5  # smaller than any language model a preference run trains


def _check_number(name: str, flag: str, value, low, high, *, integer: bool, above: bool = False, unit: str = "",
                  hint: str = ""):
    """``value`` must be a real (finite) number, an integer if ``integer``, within [low, high] (low excluded when
    ``above``): else one error naming the argument, its CLI flag and the range to send."""
    ok = (isinstance(value, int) if integer else isinstance(value, (int, float))) and not isinstance(value, bool)
    ok = ok and (isinstance(value, int) or math.isfinite(value))  # math.isfinite overflows on a 400-digit int
    ok = ok and (value > low if above else value >= low) and value <= high  # int vs float compares exactly
    if not ok:
        shown = repr(value) if not isinstance(value, int) or value.bit_length() < 256 else "a huge integer"
        kind = "a whole number" if integer else "a finite number"
        lo, hi = (f"{x:g}" if isinstance(x, float) else str(x) for x in (low, high))
        span = f"above {lo} and at most {hi}" if above else f"from {lo} to {hi}"
        raise PrefpilotError(f"{name} ({flag}) must be {kind}{unit} {span}{hint}; got {shown[:40]}",
                             code="bad_argument", path=f"/{name}")


def check_plan_arguments(gpu_memory_gb=None, num_gpus=None, dataset_size=None, max_length=1024, model_params=None,
                         bf16_supported=None) -> None:
    """plan()'s numbers, bounded here for every caller (the CLI's flags, the MCP tool, Python): inf, NaN, 0 or
    -1 GB, max_length 0 or a 400-digit count would otherwise fail deep in the estimate or the validator."""
    from .config.limits import MAX_GPU_MEMORY_GB, MAX_GPUS, MAX_MODEL_PARAMS, MAX_PAIRS, MAX_TOKENS
    if gpu_memory_gb is not None:
        _check_number("gpu_memory_gb", "--gpu-memory-gb", gpu_memory_gb, 0, MAX_GPU_MEMORY_GB, integer=False,
                      above=True, unit=" of GB per GPU", hint=" (or omit it to plan for this machine)")
    if num_gpus is not None:
        _check_number("num_gpus", "--num-gpus", num_gpus, 0, MAX_GPUS, integer=True)
    if dataset_size is not None:
        _check_number("dataset_size", "--dataset-size", dataset_size, 1, MAX_PAIRS, integer=True,
                      unit=" of preference pairs")
    _check_number("max_length", "--max-length", max_length, 8, MAX_TOKENS, integer=True, unit=" of tokens")
    if model_params is not None:
        _check_number("model_params", "--model-params", model_params, MIN_MODEL_PARAMS, MAX_MODEL_PARAMS,
                      integer=False, unit=" of parameters", hint=" (e.g. 7e9)")
    if bf16_supported is not None and not isinstance(bf16_supported, bool):
        raise PrefpilotError(f"bf16_supported (--bf16-supported) must be true or false; got {str(bf16_supported)[:40]}",
                             code="bad_argument", path="/bf16_supported")


PLAN_METHODS = ("dpo", "simpo", "orpo", "kto")


def plan(method: str = "dpo", model: str = "HuggingFaceTB/SmolLM2-135M-Instruct", gpu_memory_gb: float | None = None,
         num_gpus: int | None = None, dataset_size: int | None = None, dataset_path: str = "builtin:arith-prefs",
         bf16_supported: bool | None = None, max_length: int = 1024, model_params: float | None = None) -> dict:
    if method not in PLAN_METHODS:
        raise PrefpilotError(f"method must be one of {', '.join(PLAN_METHODS)}, got {method!r}", code="bad_method",
                             path="/method")
    if not model or not isinstance(model, str):
        raise PrefpilotError("model must be a model id or a local path", code="required", path="/model")
    check_plan_arguments(gpu_memory_gb, num_gpus, dataset_size, max_length, model_params, bf16_supported)
    hw_given = {k: v for k, v in {"gpu_memory_gb": gpu_memory_gb, "num_gpus": num_gpus,
                                  "bf16_supported": bf16_supported}.items() if v is not None}
    hw = resolve_hardware(hw_given or None)
    gpu = bool(hw.get("gpu_memory_gb"))
    table = load_table(method)
    size = resolve_model_size({"model_name_or_path": model, "model_params": model_params})
    row, why = nearest_row(table["rows"], family_of(model), size["params"], variant_of(model))
    rationale = [f"hyperparameters from table row `{row['id']}` ({row['model']}; {why}); source: {row['source']}"]
    hub = hub_dataset_id(dataset_path)  # TRL loads an `org/name` from the hub: it goes in dataset_name
    cfg: dict = {"method": method, "model_name_or_path": model, ("dataset_name" if hub else "dataset_path"): dataset_path,
                 "beta": row["beta"], "learning_rate": row["learning_rate"], "num_train_epochs": 1,
                 "lr_scheduler_type": "cosine", "warmup_steps": 0.1, "max_length": max_length,
                 "logging_steps": 1, "save_strategy": "no", "report_to": "none"}
    if model_params:
        cfg["model_params"] = model_params
    if hw_given:
        cfg["hardware"] = hw_given
    if method == "simpo":
        cfg.update(gamma_beta_ratio=row["gamma_beta_ratio"], loss_type="sigmoid", sft_weight=0.0)
        rationale.append(f"SimPO: β = {row['beta']}, γ/β = {row['gamma_beta_ratio']} → simpo_gamma = "
                         f"{row['beta'] * row['gamma_beta_ratio']:g}; no reference model")
    elif method == "orpo":
        rationale.append(f"ORPO: λ (TRL's beta) = {row['beta']}, learning rate {row['learning_rate']:g}: the odds-ratio "
                         "weight beside the NLL term; no reference model and no SFT stage (ORPO is the SFT)")
    elif method == "kto":
        cfg["loss_type"] = "kto"
        rationale.append(f"KTO: β = {row['beta']}, learning rate {row['learning_rate']:g}, desirable_weight = "
                         "undesirable_weight = 1 (right for paired data, which gives one desirable and one "
                         "undesirable row per pair; for unpaired data `prefpilot validate` checks the balance)")
    else:
        cfg["loss_type"] = "sigmoid"
        rationale.append(f"DPO sigmoid loss, β = {row['beta']} (the published baseline for this row)")
    # Batch: the papers' total of 128 pairs, shrunk for small datasets so a run still takes ~20+ optimizer steps.
    total = PAPER_TOTAL_BATCH
    if dataset_size is None:
        dataset_size, counted, split = count_pairs(dataset_path)
        rationale.append(counted)
        if split not in (None, "train"):  # e.g. ultrafeedback_binarized trains on train_prefs
            cfg["dataset_train_split"] = split
            rationale.append(f"dataset_train_split: {split} (the set has no split called train)")
    if dataset_size:
        while total > 8 and dataset_size / total < 20:
            total //= 2
        rationale.append(f"total batch {total} pairs ({dataset_size} pairs → {dataset_size // total} optimizer steps "
                         f"per epoch; the paper's 128 would give too few)" if total < PAPER_TOTAL_BATCH else
                         f"total batch {total} pairs, as in the SimPO paper's runs")
        if dataset_size // total < 10:
            rationale.append(f"warning: only {dataset_size // total} optimizer step(s) per epoch even at a total batch "
                             f"of {total}: use more pairs, or more epochs (num_train_epochs)")
    ndev = max(1, hw.get("num_gpus") or 1) if gpu else 1
    per_device = 2 if gpu else 4
    if method == "kto":  # TRL's KTO docs: at least 4 per device, the KL estimate is per batch
        per_device = 4
        rationale.append("KTO: 4 rows per device, the smallest batch TRL's KTO docs accept for the KL estimate")
    cfg["per_device_train_batch_size"] = per_device
    cfg["gradient_accumulation_steps"] = max(1, total // (per_device * ndev))
    if gpu and hw.get("bf16_supported"):
        cfg.update(bf16=True, dtype="bfloat16")
        rationale.append("bf16 weights and compute: the GPU supports it")
    elif gpu:
        cfg.update(bf16=False, fp16=True)
        rationale.append("fp16 mixed precision: this GPU has no bf16")
    else:
        cfg.update(bf16=False, use_cpu=True)
        rationale.append("CPU only: fp32 (bf16 would be emulated)")
    cfg["activation_checkpointing"] = False  # transformers 5's name for gradient_checkpointing
    savers = []

    def fits():
        est = estimate_memory({**cfg, "model_params": size["params"]} if size["params"] else cfg, hw)
        cap = est.get("device_memory_gb")
        return est, (not est.get("known")) or cap is None or est["total_gb"] <= 0.85 * cap

    est, ok = fits()
    steps = [("activation_checkpointing", {"activation_checkpointing": True},
              "recomputes activations in the backward (~30% slower) to cut activation memory")]
    if method in ("dpo", "kto"):
        steps.append(("precompute_ref_log_probs", {"precompute_ref_log_probs": True},
                      "reference log-probs computed once up front; no reference model in memory"))
    steps.append(("lora", {"use_peft": True, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
                           "lora_target_modules": "all-linear"},
                  f"LoRA adapters only are trained; learning rate ×{LORA_LR_FACTOR}"))
    if gpu:
        steps.append(("qlora", {"load_in_4bit": True}, "4-bit base weights (QLoRA)"))
    for name, change, why in steps:
        if ok:
            break
        cfg.update(change)
        if name == "lora":
            cfg["learning_rate"] = float(f"{row['learning_rate'] * LORA_LR_FACTOR:.3g}")
            cfg.pop("precompute_ref_log_probs", None)  # with PEFT the reference costs no memory
        savers.append({"saver": name, "why": why})
        est, ok = fits()
    if not ok:
        raise PrefpilotError(f"{model} does not fit in {hw.get('gpu_memory_gb') or hw.get('ram_gb')} GB even with "
                             f"QLoRA and checkpointing (estimate {est['total_gb']} GB): use more or larger GPUs",
                             code="out_of_memory")
    if gpu and (hw.get("num_gpus") or 1) > 1:
        rationale.append(f"{hw['num_gpus']} GPUs: the estimate assumes FSDP full sharding "
                         "(`prefpilot train --launcher accelerate --num-processes N --fsdp ...`)")
    if not savers and est.get("known"):
        rationale.append("no memory savers needed: the estimate fits in 85% of device memory, so gradient "
                         "checkpointing stays off (TRL turns it on by default, costing ~30% speed)")
    elif not savers:  # no size, no estimate: say what was not decided rather than that it fits
        rationale.append("memory savers not chosen: the model's size is unknown, so nothing was estimated (pass "
                         "--model-params, e.g. 7e9, for a plan that fits the machine)")
    report = validate(cfg)
    user = [e for e in report["errors"] if e["path"] in ("/dataset_path", "/model_name_or_path", "/dataset_name")]
    if user:  # what the caller named is missing or unreadable: their input, said like the validator says it
        e = user[0]
        raise PrefpilotError(f"{e['path'].lstrip('/')}: {e['message']}" + (f" → {e['suggestion']}"
                                                                           if e.get("suggestion") else ""),
                             code=e["code"], path=e["path"])
    if not report["valid"]:  # a planner bug, not a user error: say so plainly
        raise PrefpilotError(f"internal: planned config does not validate: {report['errors']}", code="internal")
    return {"config": cfg, "rationale": rationale, "memory_savers": savers, "estimate": est,
            "table_row": row, "hardware": hw, "warnings": report["warnings"]}
