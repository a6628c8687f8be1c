"""Evaluate a run's trained model: which pairs, which checkpoints, what is written where. Light at import
(torch loads inside ``evaluate``), so the CLI and the MCP server can name it without paying for it.

Held-out pairs, first found of: ``pairs`` (a file or builtin set the caller gives), the run's test split
(a builtin set's test file, a hub dataset's test split in the local cache), the slice the trainer set aside at
launch (``eval/holdout.jsonl``, see config key ``eval_holdout``). Checkpoints: ``last`` evaluates the final
model (else the newest complete checkpoint), ``all`` every complete checkpoint and the final model, and picks
``best_checkpoint``. Written: ``eval/report.json`` (what is returned), ``eval/samples.jsonl`` (prompt,
reference and policy completions of the last model evaluated), ``eval/margins.png``, and ``best_checkpoint``
and an ``evaluation`` summary in status.json.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from .. import rundir
from ..errors import PrefpilotError
from .judge import judge
from .metrics import accuracy_se, preference_summary

DEFAULT_PROMPTS = 8          # generation checks: enough to see loops and missing EOS, cheap on a CPU
DEFAULT_MAX_NEW_TOKENS = 48
DEFAULT_MAX_PAIRS = 64
MIN_DEFAULT_PAIRS = 16
SAMPLES_IN_REPORT = 3


def _config(run_dir: Path) -> dict:
    from ..config.load import safe_yaml
    f = run_dir / "config.yaml"
    if not f.is_file():
        raise PrefpilotError(f"{run_dir}: no config.yaml; pass a run dir written by prefpilot", code="not_a_run")
    cfg = safe_yaml(f.read_text(encoding="utf-8"), str(f))
    if not isinstance(cfg, dict):
        raise PrefpilotError(f"{f}: not a mapping", code="not_a_run")
    return cfg


def heldout_rows(run_dir: Path, cfg: dict, pairs: str | None, limit: int) -> tuple[list[dict], str]:
    """(rows, where they came from): the caller's, the run's test split, or the slice set aside at launch."""
    from ..train.data import check_rows, read_rows
    if pairs:
        if pairs.startswith("builtin:"):
            from ..data import builtin_files
            rows, source = read_rows(str(builtin_files(pairs[8:])["test"])), f"{pairs} (test split)"
        else:
            rows, source = read_rows(pairs), pairs
    else:
        rows, source = None, None
        dp, name = cfg.get("dataset_path"), cfg.get("dataset_name")
        if isinstance(dp, str) and dp.startswith("builtin:"):
            from ..data import builtin_files
            rows, source = read_rows(str(builtin_files(dp[8:])["test"])), f"{dp} (its test split)"
        elif name:
            try:
                from datasets import load_dataset
                ds = load_dataset(name, name=cfg.get("dataset_config"))
                split = cfg.get("dataset_test_split", "test")
                if split in ds:
                    rows, source = ds[split].select(range(min(limit, len(ds[split])))).to_list(), f"{name} ({split})"
            except Exception:  # offline and not cached: fall through to the holdout
                rows = None
        held = run_dir / "eval" / "holdout.jsonl"
        if rows is None and held.is_file():
            rows, source = read_rows(str(held)), f"{held} (set aside at launch, never trained on)"
        if rows is None:
            raise PrefpilotError(f"{run_dir}: no held-out pairs. The run's data has no test split and set none aside "
                                 "(eval_holdout); pass --pairs FILE (prompt/chosen/rejected rows the run did not "
                                 "train on)", code="no_heldout")
    from ..datacheck.layouts import detect
    if rows and detect(rows[:200])[0] == "unpaired":  # a KTO run on thumbs-up/down rows: nothing to compare
        raise PrefpilotError(f"{source}: the held-out rows are unpaired ({{prompt, completion, label}}, KTO's data); "
                             "prefpilot eval scores the trained model on pairs (chosen against rejected, beside its "
                             "reference): pass --pairs FILE with prompt/chosen/rejected rows", code="no_heldout")
    rows, _ = check_rows(rows[:limit], source, max_bad_rows=len(rows))
    if not rows:
        raise PrefpilotError(f"{source}: no usable pair (prompt/chosen/rejected)", code="no_heldout")
    return rows, source


def default_max_pairs(run_dir: Path, cfg: dict) -> int:
    """Held-out pairs scored when the caller does not say: a fifth of the pairs the run trained on, from 16 to
    64. Scoring a pair under one model is a forward pass over prompt and both answers, about an eighth of what
    training on it cost (forward and backward over two sequences, the reference's forward, the optimizer step);
    the evaluation scores each pair twice (reference and trained model), so a fifth keeps the scoring near 4% of
    the training time with loading, tokenizing and the plot inside 5% on the demo (bench/eval_cost.py); a run of
    thousands of steps gets 64. The report's ``preference_accuracy_se`` says what the size buys (±0.11 at 16
    pairs); ``max_pairs`` raises it. A run whose step count is unknown gets 64."""
    st = rundir.read_status(run_dir)
    step = st.get("step")

    def whole(v, default):
        return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else default
    if not isinstance(step, int) or isinstance(step, bool) or step <= 0:
        return DEFAULT_MAX_PAIRS
    seen = (step * whole(cfg.get("per_device_train_batch_size"), 8) * whole(cfg.get("gradient_accumulation_steps"), 1)
            * whole(st.get("world_size"), 1))
    return max(MIN_DEFAULT_PAIRS, min(DEFAULT_MAX_PAIRS, seen // 5))


def targets(run_dir: Path, which: str) -> list[Path]:
    ckpts = sorted((p for p in (run_dir / "checkpoints").glob("checkpoint-*")
                    if p.name.split("-")[-1].isdecimal() and (p / "trainer_state.json").is_file()),
                   key=lambda p: int(p.name.split("-")[-1]))
    final = run_dir / "final"
    final = [final] if (final / "config.json").is_file() or (final / "adapter_config.json").is_file() else []
    if which == "all":
        # the final model is the last checkpoint's weights when the run saved at its last step: score it once
        last_step = rundir.read_status(run_dir).get("step")
        if final and ckpts and last_step is not None and _step(ckpts[-1]) == last_step:
            ckpts = ckpts[:-1]
        found = ckpts + final
    elif which == "last":
        found = final or ckpts[-1:]
    else:
        raise PrefpilotError(f"checkpoints {which!r}: use last or all", code="usage")
    if not found:
        raise PrefpilotError(f"{run_dir}: no final model and no complete checkpoint to evaluate (has it finished "
                             "or saved one?)", code="nothing_to_evaluate")
    return found


def _step(path: Path) -> int | None:
    tail = path.name.split("-")[-1]
    return int(tail) if tail.isdecimal() else None


def _train_accuracy(run_dir: Path) -> float | None:
    rows = [r for r in rundir.read_metrics(run_dir) if isinstance(r.get("rewards/accuracies"), (int, float))]
    tail = rows[-max(1, len(rows) // 10):]
    return sum(r["rewards/accuracies"] for r in tail) / len(tail) if tail else None


def _best(rows: list[dict], key: str) -> dict | None:
    """Highest held-out accuracy among models whose generations raise no error or warning; the earlier on ties
    (nearer the reference)."""
    ok = [r for r in rows if not r["guard_findings"]] or rows
    if not ok:
        return None
    top = max(ok, key=lambda r: (r["preference_accuracy"][key], -(r["step"] or 0)))
    guarded = len(ok) < len(rows)
    return {"name": top["name"], "path": top["path"], "step": top["step"],
            "reason": f"highest held-out {key} accuracy ({top['preference_accuracy'][key]:.3f})"
                      + (" among those whose generations pass the checks" if guarded else "")}


def _reference_cache(ref_path, tokenized: list[dict], prompt_ids: list, max_length, max_new_tokens,
                     gen_engine: str = "transformers") -> Path | None:
    """Where the reference's scores and greedy completions for exactly these token ids are kept, or None.

    The key is the token ids themselves (so tokenizer, chat template and truncation are in it), the caps, and the
    reference's files (path, size and modification time of each weight and config file): a retrained or replaced
    reference never reads an old entry. Runs of a sweep (same base model, same held-out pairs) then score the
    reference once."""
    import hashlib
    from ..train.models import cache_dir
    ref = Path(ref_path)
    if not ref.is_dir():
        return None
    h = hashlib.sha256(json.dumps([tokenized, prompt_ids, max_length, max_new_tokens, gen_engine]).encode())
    for f in sorted(ref.iterdir()):
        if f.suffix in (".safetensors", ".bin", ".json") and f.is_file():
            st = f.stat()
            h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return cache_dir() / "eval-reference" / f"{h.hexdigest()[:32]}.json"


def _read_cache(path: Path | None) -> dict | None:
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(data, dict) and isinstance(data.get("logps"), dict) and isinstance(data.get("samples"), list)
    return data if ok else None


def _write_cache(path: Path | None, data: dict) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        rundir.write_json_atomic(path, data)
    except OSError:
        pass  # a read-only cache costs the next evaluation time, never this one its result


def evaluate(run_dir, *, pairs: str | None = None, prompts: int = DEFAULT_PROMPTS, checkpoints: str = "last",
             max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, max_pairs: int | None = None,
             progress=None, reference_cache: bool = True, engine: str = "auto") -> dict:
    """Evaluate the run in ``run_dir``; returns (and writes to eval/report.json) the report.

    ``progress(done, total, what)`` is called as models are scored (the background job writes it to
    eval/status.json; the CLI prints it). ``engine``: who generates (auto: vLLM when installed with a GPU, else
    transformers); scoring is always transformers, so accuracies never depend on it."""
    engine_name = engine
    t0 = time.time()
    run_dir = Path(run_dir)
    cfg = _config(run_dir)
    method = cfg.get("method", "dpo")
    # DPO and KTO train against a reference: β·(log-ratio of chosen − of rejected) is their implicit reward
    beta = float(cfg.get("beta", 0.1)) if method in ("dpo", "kto") else None
    if max_pairs is None:
        max_pairs = default_max_pairs(run_dir, cfg)
    rows, source = heldout_rows(run_dir, cfg, pairs, max_pairs)
    found = targets(run_dir, checkpoints)
    total = 2 + 2 * len(found)  # reference scored and generating, then each model
    done = 0

    def tick(what):
        nonlocal done
        done += 1
        if progress:
            progress(done, total, what)

    import datasets
    import torch
    from transformers import AutoTokenizer

    from ..train.models import resolve_model
    from . import engine
    datasets.disable_progress_bars()
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # "Loading weights" bars per model: the caller's progress() reports instead
    torch.manual_seed(0)
    ref_path, _ = resolve_model(cfg["model_name_or_path"])
    tok_dir = found[-1] if (found[-1] / "tokenizer_config.json").is_file() else ref_path
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    max_length = cfg.get("max_length") or 1024
    tokenized = engine.tokenize_pairs(rows, tok, max_length)
    pad = tok.pad_token_id
    prompt_ids = [p["prompt_ids"] for p in tokenized[:prompts]]
    ref_model = None

    def reference():  # loaded only when something needs it: a cached reference side with empty samples does not
        nonlocal ref_model
        if ref_model is None:
            ref_model = engine.load_model(ref_path)
        return ref_model
    gen_engine = engine.pick_engine(engine_name, ref_path)
    cache = (_reference_cache(ref_path, tokenized, prompt_ids, max_length, max_new_tokens, gen_engine)
             if reference_cache else None)
    cached = _read_cache(cache)
    if cached:  # the same reference on the same token ids: a sweep's runs share it
        ref_logps, ref_gen = cached["logps"], cached["samples"]
    else:
        ref_logps = engine.pair_logps(reference(), tokenized, pad, max_length)
    before = preference_summary(ref_logps, ref_logps, beta)
    tick("reference scored" + (" (cached)" if cached else ""))
    def complete(get_model, folder, scored):
        if not prompt_ids:
            return []
        if gen_engine == "vllm" and engine.pick_engine("auto", folder) == "vllm":
            return engine.generate_vllm(folder, tok, prompt_ids, max_new_tokens)
        # the scoring pass already has each held-out prompt's greedy first token: an EOS there is an empty answer
        return engine.generate(get_model(), tok, prompt_ids, max_new_tokens, first=scored.get("first"))

    if not cached:
        ref_gen = complete(reference, ref_path, ref_logps)
        _write_cache(cache, {"logps": ref_logps, "samples": ref_gen})
    tick("reference generated" + (" (cached)" if cached else ""))

    per_model, samples = [], []
    for path in found:
        policy = engine.load_model(str(path), base=ref_path)
        scored = engine.pair_logps(policy, tokenized, pad, max_length)
        pref = preference_summary(scored, ref_logps, beta)
        tick(f"{path.name} scored")
        gen, samples = ({}, [])
        if prompt_ids:
            gen, samples = engine.generation_checks(policy, reference, tok, prompt_ids, max_new_tokens, max_length,
                                                    reference_samples=ref_gen,
                                                    policy_samples=complete(lambda: policy, path, scored))
        tick(f"{path.name} generated")
        step = _step(path) if path.name != "final" else rundir.read_status(run_dir).get("step")
        row = {"name": path.name, "path": str(path), "step": step,
               "preference_accuracy": {k: v["accuracy"] for k, v in pref.items() if isinstance(v, dict)
                                       and "accuracy" in v},
               "margins": {k: {"mean": v["mean_margin"], "median": v["median_margin"]} for k, v in pref.items()
                           if isinstance(v, dict) and "accuracy" in v},
               "generation": {k: v for k, v in gen.items() if k not in ("policy", "reference")}, "_gen": gen,
               "_pref": pref}
        guard = judge({"generation": gen, "method": method, "max_new_tokens": max_new_tokens}, cfg)
        row["guard_findings"] = [f["id"] for f in guard if f["severity"] in ("error", "warning")]
        per_model.append(row)
        del policy
    last = per_model[-1]
    from .metrics import primary_metric
    key = primary_metric(method) if method not in ("dpo", "kto") else "implicit"
    best = _best(per_model, key) if len(per_model) > 1 else None
    report = {"run_id": run_dir.name, "run_dir": str(run_dir), "method": method, "model": last["name"],
              "pairs": before["pairs"], "pairs_source": source, "prompts": len(prompt_ids),
              "max_new_tokens": max_new_tokens, "generation_engine": gen_engine,
              "preference_accuracy": last["preference_accuracy"],
              "preference_accuracy_se": {k: round(accuracy_se(v, before["pairs"]), 4)
                                         for k, v in last["preference_accuracy"].items()},
              "margins": last["margins"],
              "before": {k: v["accuracy"] for k, v in before.items() if isinstance(v, dict) and "accuracy" in v},
              "generation": last["_gen"],
              "checkpoints": [{k: v for k, v in r.items() if not k.startswith("_")} for r in per_model],
              "best_checkpoint": best}
    report["findings"] = judge(report, cfg, _train_accuracy(run_dir))
    bad = [f["id"] for f in report["findings"] if f["severity"] in ("error", "warning")]
    report["verdict"] = "problems" if bad else "healthy"
    report["summary"] = (f"{len(bad)} problem(s) with the trained model: {', '.join(bad)}" if bad else
                         f"the trained model passes the held-out and generation checks ({key} accuracy "
                         f"{last['preference_accuracy'].get(key, float('nan')):.3f} on {before['pairs']} pairs)")
    out = run_dir / "eval"
    out.mkdir(exist_ok=True)
    with open(out / "samples.jsonl", "w", encoding="utf-8") as fh:
        for s in samples:
            fh.write(json.dumps(s, ensure_ascii=False) + "\n")
    report["samples_path"] = str(out / "samples.jsonl")
    report["samples"] = samples[:SAMPLES_IN_REPORT]
    try:
        report["plot"] = str(plot_margins(before["margins"], last["_pref"]["margins"], out / "margins.png",
                                          title=f"{method.upper()} {run_dir.name}: held-out margins"))
    except Exception as exc:  # a plot must never cost the evaluation
        report["plot_error"] = f"{type(exc).__name__}: {exc}"
    report["seconds"] = round(time.time() - t0, 2)
    rundir.write_json_atomic(out / "report.json", report)
    rundir.update_status(run_dir, best_checkpoint=best, evaluation={
        "verdict": report["verdict"], "preference_accuracy": report["preference_accuracy"],
        "findings": [f["id"] for f in report["findings"]], "report": str(out / "report.json")})
    return report


def plot_margins(before: dict, after: dict | None, out, title: str = "") -> Path:
    """Histograms of the held-out per-pair margins (chosen minus rejected), before (the reference) and after
    (none for `prefpilot data check --score`, which has only the reference), summed and per token: accuracy is
    the share right of 0."""
    # the object API without pyplot (no display, no global figure registry) and a fixed layout: tight_layout
    # draws the figure once more to measure it, 40% of the plot's time
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(10, 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, key, label in zip(axes, ("summed", "per_token"),
                              ("summed log-prob margin (nats)", "per-token log-prob margin (nats/token)")):
        b, a = before[key], after[key] if after else []
        lo, hi = min(b + a + [0.0]), max(b + a + [0.0])
        bins = [lo + (hi - lo) * i / 24 for i in range(25)] if hi > lo else 10
        # one filled outline per histogram, not a patch per bin: a fifth of the plot's drawing time
        ax.hist(b, bins=bins, alpha=0.6, histtype="stepfilled", label="before (reference)" if after else "reference",
                color="#7f7f7f")
        if after:
            ax.hist(a, bins=bins, alpha=0.6, histtype="stepfilled", label="after", color="#1f77b4")
        ax.axvline(0.0, color="black", lw=1)
        ax.set_xlabel(label)
        ax.set_ylabel("pairs")
        ax.legend(loc="upper left", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.14, top=0.88 if title else 0.95, wspace=0.2)
    out = Path(out)
    fig.savefig(out, dpi=90)
    return out


def read_report(run_dir) -> dict | None:
    """The last evaluation of a run, if any (what `diagnose` shows beside the curves)."""
    f = Path(run_dir) / "eval" / "report.json"
    try:
        with rundir.open_regular(f) as fh:
            data = json.loads(fh.read(16 << 20))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
