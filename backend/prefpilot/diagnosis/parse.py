"""Turn whatever a person has into rows of canonical metrics.

This module owns the spellings (one alias table, :func:`canonical`), the fast paths for JSON/JSONL
(trainer_state.json, metrics.jsonl, LLaMA-Factory's trainer_log.jsonl, lists of dicts), run dirs,
TensorBoard event files, and the normalised :class:`History`. Every other container (notebooks, model
cards, READMEs, CSV, pasted console output, other trainers' lines) is cut into candidate blocks by
blocks.py, which picks the best. Every row is a dict of floats (NaN/inf kept), with ``step``.
"""
from __future__ import annotations

import gc
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import compress, repeat
from operator import contains, itemgetter, lt
from pathlib import Path

from ..errors import PrefpilotError

# Names the rules read (TRL's spelling).
METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
           "logps/chosen", "logps/rejected", "ref_logps/chosen", "ref_logps/rejected",
           "grad_norm", "learning_rate", "nll_loss", "epoch", "entropy", "logits/chosen", "logits/rejected",
           # other trainers' own keys: they tell which trainer wrote a log (KTO: kl; ORPO: odds ratios)
           "kl", "log_odds_ratio", "log_odds_chosen", "odds_ratio_loss")
# Logged by TRL/transformers/LLaMA-Factory but not used by the rules: kept quiet, not reported as unrecognised.
BOOKKEEPING = {"num_tokens", "mean_token_accuracy",
               "wall_time", "tokens_per_second", "total_flos", "runtime", "samples_per_second",
               "steps_per_second", "num_input_tokens_seen", "timestamp", "_runtime", "_timestamp", "time",
               "train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss",
               "total_steps", "percentage", "elapsed_time", "remaining_time", "throughput", "total_tokens",
               "predict_loss", "reward", "aux_loss",
               # mlx_lm, ms-swift, OpenRLHF, W&B
               "it/sec", "tokens/sec", "trained_tokens", "peak_mem", "took", "memory(gib)", "train_speed(iter/s)",
               "_wandb", "examples_per_second", "counters/examples", "counters/updates", "epoch/num_epochs"}

_ALIASES = {
    "rewards/margins": ["reward_margin", "reward_margins", "rewards_margin", "rewards_margins", "margin",
                        "margins", "rewards/margin", "reward/margin", "reward/margins", "reward_diff"],
    "rewards/accuracies": ["reward_accuracy", "reward_accuracies", "rewards_accuracy", "rewards_accuracies",
                           "rewards/accuracy", "reward/accuracy", "accuracy", "acc", "preference_accuracy",
                           "pref_accuracy", "pref_acc", "acc_mean", "reward_acc", "rewards/acc", "accuracies"],
    # SPIN (self-play; TRL-derived DPO loss) names the pair real (the data's answer) and generated (the model's)
    "rewards/chosen": ["chosen_reward", "chosen_rewards", "reward_chosen", "rewards_chosen", "reward/chosen",
                       "rewards/real", "rewards_chosen_mean"],
    "rewards/rejected": ["rejected_reward", "rejected_rewards", "reward_rejected", "rewards_rejected",
                         "reward/rejected", "reject_reward", "reject_rewards", "rewards/reject",
                         "rewards/generated", "rewards_rejected_mean"],
    "logps/chosen": ["policy_chosen_logps", "policy_chosen_logprobs", "policy_chosen_logp", "chosen_logps",
                     "chosen_logprobs", "chosen_logp", "logps_chosen", "logprobs/chosen", "logprobs_chosen",
                     "logp/chosen", "policy_logps/chosen", "logps/real"],
    "logps/rejected": ["policy_rejected_logps", "policy_rejected_logprobs", "policy_rejected_logp",
                       "rejected_logps", "rejected_logprobs", "rejected_logp", "logps_rejected",
                       "logprobs/rejected", "logprobs_rejected", "logp/rejected", "policy_logps/rejected",
                       "logps/generated"],
    "logits/chosen": ["logits/real"],
    "logits/rejected": ["logits/generated"],
    "ref_logps/chosen": ["reference_chosen_logps", "reference_chosen_logprobs", "ref_chosen_logps",
                         "ref_chosen_logprobs", "ref_logps_chosen", "ref_logprobs/chosen"],
    "ref_logps/rejected": ["reference_rejected_logps", "reference_rejected_logprobs", "ref_rejected_logps",
                           "ref_rejected_logprobs", "ref_logps_rejected", "ref_logprobs/rejected"],
    "loss": ["dpo_loss", "simpo_loss", "pref_loss", "preference_loss", "total_loss", "loss_mean", "orpo_total_loss"],
    "grad_norm": ["gradient_norm", "grad-norm", "gnorm", "grad_norm_total", "total_norm"],
    "learning_rate": ["lr"],
    "nll_loss": ["sft_loss", "nll"],
    "odds_ratio_loss": ["or_loss", "orpo_loss"],
    "step": ["global_step", "iteration", "iter", "it", "steps", "_step", "train/global_step", "trainer/global_step",
             "current_steps", "global_step/max_steps"],
}
ALIAS = {a: canon for canon, names in _ALIASES.items() for a in names}
KNOWN = set(METRICS) | {"step"}


_INFIX = re.compile(r"^([a-z]+)_(train|eval|valid|val|test)/(.+)$")   # the DPO repo's rewards_train/chosen
_SUFFIX = re.compile(r"^(.+)/(train|eval|valid|val|test)$")            # and its loss/train
_EVAL_SPLITS = ("eval", "valid", "val", "test")


@lru_cache(maxsize=4096)
def canonical(name: str) -> tuple[str, str | None]:
    """(split, canonical name or None): split is "train" or "eval"; None means not a metric we know.

    The one place that knows spellings: case, spaces, `rewards / chosen` vs `rewards/chosen`, `train/` and
    `eval/` prefixes, `Train Loss`, W&B's `run name - train/loss` CSV headings, the DPO repo's
    `rewards_train/chosen` and `loss/eval`, and the aliases above."""
    n = str(name).strip().lower()
    if " - " in n:  # a W&B panel export heads each column "<run name> - <metric>"
        n = n.rsplit(" - ", 1)[1]
    if n.endswith(("__min", "__max", "__step")):  # W&B's min/max bands beside each exported series
        return "train", None
    n = re.sub(r"\s*/\s*", "/", n).replace(" ", "_")
    split = "train"
    for pre in ("eval/", "eval_", "validation/", "validation_", "val/", "val_", "valid/", "valid_", "test/"):
        if n.startswith(pre) and n != "eval_runtime":
            split, n = "eval", n[len(pre):]
            break
    else:
        if n.startswith("train/"):
            n = n[len("train/"):]
    if n not in KNOWN and n not in ALIAS:
        m = _INFIX.match(n) or _SUFFIX.match(n)
        if m:
            split = "eval" if m.group(2) in _EVAL_SPLITS else split
            n = f"{m.group(1)}/{m.group(3)}" if m.re is _INFIX else m.group(1)
    for candidate in (n, n[len("train_"):] if n.startswith("train_") else None):
        if candidate is None:
            continue
        if candidate in KNOWN:
            return split, candidate
        if candidate in ALIAS:
            return split, ALIAS[candidate]
    return split, None


_NUM = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf(?:inity)?)", re.I)


def to_float(v):
    """A number from a number, a numeric string, "nan"/"inf", or "tensor(0.69, ...)"; else None."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, float):
        return v
    if isinstance(v, int):  # ints (steps) too; one past float's range (a 400-digit count) reads as ±inf
        try:
            return float(v)
        except OverflowError:
            return math.inf if v > 0 else -math.inf
    if isinstance(v, str):
        s = v.strip()
        try:
            return float(s)
        except ValueError:
            if s.startswith("tensor("):
                m = _NUM.search(s)
                return float(m.group(0)) if m else None
    return None


_STEP = itemgetter("step")


@dataclass
class History:
    train: list[dict] = field(default_factory=list)
    eval: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    # keys that hold a NaN/inf somewhere, per split: found while parsing, so checks need not rescan long runs
    nonfinite: dict = field(default_factory=lambda: {"train": set(), "eval": set()})
    _cols: dict = field(default_factory=dict, repr=False)

    def series(self, key: str, split: str = "train") -> tuple[list[float], list[float]]:
        """(steps, values) of rows that have ``key``; values may be NaN/inf. Cached: rows are final once parsed."""
        cached = self._cols.get((key, split))
        if cached is None:
            rows = self.train if split == "train" else self.eval
            # map/compress/itemgetter keep the three passes over a long run in C
            have = list(compress(rows, map(contains, rows, repeat(key))))
            cached = self._cols[(key, split)] = (list(map(_STEP, have)), list(map(itemgetter(key), have)))
        return cached


# ----------------------------------------------------------------------------- readers
def _from_json_obj(obj, info: dict) -> list[dict]:
    from . import blocks
    if isinstance(obj, dict) and isinstance(obj.get("log_history"), list):
        info["format"] = "trainer_state.json"
        return obj["log_history"]
    if isinstance(obj, dict) and "nbformat" in obj and not isinstance(obj.get("cells"), list):
        raise PrefpilotError(f"{info.get('source') or 'the notebook'}: a notebook without a list of cells; save it "
                             "again from Jupyter (or pass the training log itself)", code="unreadable_history")
    if isinstance(obj, dict) and isinstance(obj.get("cells"), list) and "nbformat" in obj:
        return blocks.best(blocks.notebook_blocks(obj, info.setdefault("hints", {})), info,
                           info.get("source") or "the notebook")
    if isinstance(obj, dict):
        lists = {k: v for k, v in obj.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
        if lists:  # {"raw_log_history": [{...}, ...], "train_loss": [...]}: each list is a block, and so is the dict
            scalars = {k: v for k, v in obj.items() if to_float(v) is not None}
            found = [blocks.Block("list of dicts", f"key '{k}'", v) for k, v in lists.items()]
            found.append(blocks.Block("metrics dict", "the top level", [scalars] if scalars else []))
            return blocks.best(found, info, info.get("source") or "the JSON")
        info["format"] = "metrics dict"
        return [obj]
    if isinstance(obj, list):
        info["format"] = "list of dicts"
        return obj
    raise PrefpilotError("the JSON holds neither a list of metric dicts nor a trainer_state.json with log_history",
                         code="unreadable_history")


def _jsonl_rows(s: str, info: dict) -> list[dict] | None:
    """Rows of a JSONL text (one dict per line), or None when it is not one."""
    try:  # one parse of the whole file as an array: ~30% faster than a json.loads per line
        rows = json.loads("[" + s.replace("\n", ",") + "]")
        if all(isinstance(r, dict) for r in rows):
            info["format"] = "jsonl"
            return rows
    except (ValueError, RecursionError):
        pass  # blank, junk or half-written lines: go line by line
    from .blocks import literal_dict
    lines = [ln for ln in s.splitlines() if ln.strip()]
    rows, bad = [], 0
    for ln in lines:
        try:
            obj = json.loads(ln)
        except (ValueError, RecursionError):
            obj = literal_dict(ln.strip())
        if isinstance(obj, dict):
            rows.append(obj)
        else:
            bad += 1
    if len(lines) == 1 and len(rows) == 1:  # one Python-repr object ({'log_history': [...]}): read as JSON's would be
        return _from_json_obj(rows[0], info)
    if rows and bad <= len(lines) // 2:
        info["format"] = "jsonl"
        info["ignored_lines"] = bad
        return rows
    return None


def rows_from_text(text: str, info: dict) -> list[dict]:
    """The rows of a text: JSON and JSONL directly (the fast path for long runs), anything else through the
    candidate blocks of blocks.py, the best of which is used."""
    from . import blocks
    s = text.strip()
    del text  # the stripped copy is the one read: do not hold both (a log is up to the size cap)
    if not s:
        raise PrefpilotError("the metrics are empty: pass metrics.jsonl, trainer_state.json, a CSV or pasted log",
                             code="empty_history")
    if s[0] in "[{":
        try:
            return _from_json_obj(json.loads(s), info)
        except ValueError:
            if '"nbformat"' in s[-2000:] or s.lstrip("{ \n").startswith('"cells"'):
                info["notes"].append("the notebook is not valid JSON (cut short?): read as text, so only what "
                                     "survives of its outputs is seen")
        except RecursionError:
            raise PrefpilotError("the JSON is nested too deeply to be a training log", code="unreadable_history") \
                from None
    head = [ln for ln in s[:4096].splitlines() if ln.strip()][:5]
    if head and all(ln.lstrip().startswith("{") for ln in head):
        rows = _jsonl_rows(s, info)
        if rows is not None:
            return rows
    hints = info.setdefault("hints", {})
    found = blocks.text_blocks(s, "", hints, info.get("source") or "the input")
    rows = blocks.best(found, info, info.get("source") or "the input")
    if info["format"] == "markdown table":
        card = next((b for b in found if b.kind == "model card results list"), None)
        _append_card_results(rows, card.rows[0] if card else None, info)
    return rows


def _append_card_results(table: list[dict], final: dict | None, info: dict) -> None:
    """A model card's final evaluation results go after its table, unless the last row already is them."""
    if not final or not table:
        return
    if table[-1].keys() >= final.keys() and all(to_float(table[-1][k]) == to_float(v) for k, v in final.items()):
        return
    if final in table:
        return  # already joined as a block of its own
    last = max((to_float(r.get("step")) or 0 for r in table), default=0)
    epochs = info.get("hyperparameters", {}).get("num_epochs")
    table.append({**final, "step": last + 1, **({"epoch": epochs} if epochs else {})})
    info["notes"].append("the card's final evaluation results are placed after the table's last row")


TFEVENTS = "events.out.tfevents"
# Peak memory of `prefpilot diagnose` is 10-17x a log's size (bench/diagnose_memory.py: JSONL ~10x, a console log
# or a one-line repr ~12x, CSV ~17x at 16 MiB), so the default cap costs at most ~2.2 GB: bound it, say how to raise it
DEFAULT_MAX_LOG_BYTES = 128 << 20


def size_text(n: int) -> str:
    """Bytes for a message: "40 MiB", "12 KiB" or "900 bytes" (a small --max-bytes must not read as "0 MiB")."""
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.3g} {unit}"
    return f"{n} bytes"


def max_log_bytes(given: int | None = None) -> int:
    """The size limit for one log: ``given`` (the CLI's --max-bytes), else $PREFPILOT_MAX_LOG_BYTES, else 128 MiB."""
    if given is not None:
        return min(int(given), 1 << 40)
    try:  # clamped: a 400-digit value would overflow the read size (sys.stdin.read takes a C ssize_t)
        return max(1, min(int(os.environ.get("PREFPILOT_MAX_LOG_BYTES") or DEFAULT_MAX_LOG_BYTES), 1 << 40))
    except ValueError:
        return DEFAULT_MAX_LOG_BYTES


def _refusal(p: Path, roots) -> str | None:
    """Why the reader must not open ``p``, or None. One check for every file a diagnosis reads: a FIFO or a
    device would block or never end, and for an MCP caller (``roots``) a link must not lead out of the
    workspace (its lines would come back in the report)."""
    try:
        real = p.resolve()
        st = real.stat()
    except (OSError, RuntimeError) as exc:
        return f"cannot read ({getattr(exc, 'strerror', None) or exc})"
    if roots is not None and not any(real == r or r in real.parents for r in roots):
        return "resolves outside the workspace (a symbolic link?): refused"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a FIFO, device or folder); pass a log file, a run dir or '-' for stdin"
    return None


def _read_path(path: Path, info: dict, max_bytes: int | None = None, roots=None) -> list[dict]:
    if path.is_dir():
        candidates = [path / "metrics.jsonl", path / "trainer_state.json", path / "trainer_log.jsonl"]
        from ..rundir import checkpoint_step
        cks = sorted((p for p in path.glob("checkpoints/checkpoint-*/trainer_state.json")
                      if checkpoint_step(p.parent) is not None), key=lambda p: checkpoint_step(p.parent))
        candidates += cks[::-1]
        found = None
        for c in candidates:
            if not os.path.lexists(c):
                continue
            why = _refusal(c, roots)
            if why:
                raise PrefpilotError(f"{c}: {why}", code="unreadable_history")
            if c.stat().st_size > 0:
                found = c
                break
        if found is None:
            events = sorted(path.rglob(f"{TFEVENTS}*"))
            refused = {e: _refusal(e, roots) for e in events}
            readable = [e for e in events if refused[e] is None]
            if len(readable) < len(events):
                info["notes"].append(f"{len(events) - len(readable)} event file(s) skipped: not regular files, or "
                                     "outside the workspace")
            if readable:
                info["source"] = str(path)
                return _tensorboard_rows(readable, info)
            if events:
                raise PrefpilotError(f"{events[0]}: {refused[events[0]]}", code="unreadable_history")
            raise PrefpilotError(f"{path}: no metrics.jsonl, trainer_state.json, trainer_log.jsonl or TensorBoard "
                                 "event file in this directory (has the run logged a step yet?)", code="no_metrics")
        path = found
    why = _refusal(path, roots)
    if why:
        raise PrefpilotError(f"{path}: {why}", code="unreadable_history")
    st = path.stat()
    limit = max_log_bytes(max_bytes)
    if st.st_size > limit:
        raise PrefpilotError(f"{path}: {size_text(st.st_size)} is over the {size_text(limit)} limit for a log (a "
                             "100k-step metrics.jsonl is about 40 MiB); raise it with --max-bytes or "
                             "PREFPILOT_MAX_LOG_BYTES if this file is really one run's log", code="too_large")
    if path.name.startswith(TFEVENTS):
        info["source"] = str(path)
        return _tensorboard_rows([path], info)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PrefpilotError(f"{path}: cannot read ({exc.strerror})", code="unreadable_history") from None
    if b"\0" in data[:8192]:
        raise PrefpilotError(f"{path}: a binary file, not a training log (pass metrics.jsonl, trainer_state.json, "
                             "trainer_log.jsonl, a CSV, a console log or a TensorBoard event file)",
                             code="unreadable_history")
    info["source"] = str(path)
    text = data.decode("utf-8", errors="replace")
    del data  # the bytes are not needed once decoded: a copy less at the peak
    return rows_from_text(text, info)


def _tensorboard_rows(files: list[Path], info: dict) -> list[dict]:
    """Scalars of TensorBoard event files, one row per step (tags like train/loss, eval/rewards/margins)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        raise PrefpilotError(f"{files[0]}: a TensorBoard event file; reading it needs the tensorboard package "
                             "(pip install 'prefpilot[tensorboard]'), or pass the run's trainer_state.json instead",
                             code="missing_extra") from None
    by_step: dict = {}
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})  # 0 = keep every point
        try:
            acc.Reload()
        except Exception as exc:  # a truncated or foreign file: say which, not a traceback
            raise PrefpilotError(f"{f}: not a readable TensorBoard event file ({exc})",
                                 code="unreadable_history") from None
        for tag in acc.Tags().get("scalars", []):
            for ev in acc.Scalars(tag):
                by_step.setdefault(ev.step, {"step": ev.step})[tag] = ev.value
    info["format"] = "tensorboard"
    return [by_step[k] for k in sorted(by_step)]


# ----------------------------------------------------------------------------- normalising rows
def load_history(source, *, beta: float | None = None, max_bytes: int | None = None, roots=None) -> History:
    """Parse ``source`` (path, text, list of dicts or trainer_state dict) into a :class:`History`.

    ``max_bytes`` bounds a file read from a path (default: see max_log_bytes); ``roots`` (the MCP workspace)
    are the folders every file read must resolve into."""
    # Parsing makes ~1e5 small dicts and no cycles: pausing the cyclic GC roughly halves the time.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _load_history(source, beta, max_bytes, roots)
    finally:
        if enabled:
            gc.enable()


def _exists(text: str) -> bool:
    """Is this one-line text a path? (a long pasted line is a log, not a file name: the OS says "too long")"""
    try:
        return Path(text).exists()
    except (OSError, ValueError):
        return False


def _load_history(source, beta, max_bytes=None, roots=None):
    info: dict = {"format": None, "ignored_lines": 0, "notes": []}
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source and len(source) < 4096
                                    and _exists(source)):
        raw = _read_path(Path(source), info, max_bytes, roots)
    elif isinstance(source, str):
        raw = rows_from_text(source, info)
    elif isinstance(source, (list, dict)):
        return normalise_rows(_from_json_obj(source, info), info, beta=beta)  # the caller's rows: left as they are
    else:
        raise PrefpilotError(f"cannot read metrics from a {type(source).__name__}", code="unreadable_history")
    return normalise_rows(raw, info, beta=beta, consume=True)


@lru_cache(maxsize=4096)
def _key_plan(k) -> tuple[str, str | None, bool, str]:
    """(split, canonical name, spelled canonically?, "other"|"unknown"): computed once per distinct key."""
    split, name = canonical(k)
    low = str(k).strip().lower()
    if name is None:
        kind = "other" if low in BOOKKEEPING or low.startswith("eval_") else "unknown"
        return split, None, False, kind
    return split, name, low in (name, f"eval_{name}", f"train/{name}", f"eval/{name}"), ""


_NUMBER = {float, int}
_SUMMARY_ONLY = {None, "loss", "epoch", "step"}
_CONTEXT_KEYS = {"epoch", "learning_rate"}


def _row_plan(keys: tuple) -> tuple:
    """How to read every row with these keys: (train [(key, name)], eval [(key, name)], other, unknown, aliases,
    (itemgetter of the train keys, their names)).

    Aliases come first so a canonical spelling in the same row overwrites them.
    """
    train, ev, other, unknown, aliases = [], [], set(), set(), {}
    for k in keys:
        split, name, primary, kind = _key_plan(k)
        if name is None:
            (other if kind == "other" else unknown).add(str(k))
            continue
        if not primary:
            aliases[str(k)] = name
        (ev if split == "eval" else train).append((k, name, primary))
    order = lambda e: e[2]  # noqa: E731 - aliases (False) before canonical spellings (True)
    train = [(k, n) for k, n, _ in sorted(train, key=order)]
    # itemgetter of 2+ keys returns a tuple in one call; dict(zip()) keeps the last of repeated names (canonical)
    fast = (itemgetter(*[k for k, _ in train]) if len(train) > 1 else None, tuple(n for _, n in train))
    return train, [(k, n) for k, n, _ in sorted(ev, key=order)], other, unknown, aliases, fast


def normalise_rows(raw: list, info: dict, *, beta: float | None = None, consume: bool = False) -> History:
    """``consume``: the rows were parsed here, so each raw dict is let go once read (the raw and the normalised
    rows of a long log are then never all in memory at once)."""
    hist = History(info=info)
    bad_train, bad_eval = hist.nonfinite["train"], hist.nonfinite["eval"]
    isfinite = math.isfinite
    other, unknown, aliased = set(), set(), {}
    plans: dict[tuple, tuple] = {}
    skipped_rows = 0
    order = 0
    hot_plan, hot_vals, mixed = None, [], False  # value tuples of the one row shape a long run usually has
    for i, r in enumerate(raw):
        if consume:
            raw[i] = None
        if not isinstance(r, dict):
            skipped_rows += 1
            continue
        # transformers' end-of-training summary (train_runtime, train_loss, epoch) is not a logging step; a W&B run
        # summary also carries train_runtime, but beside the run's last metrics, which are kept
        if "train_runtime" in r and {canonical(k)[1] for k in r} <= _SUMMARY_ONLY:
            other.update(map(str, r))
            continue
        shape = tuple(r)
        plan = plans.get(shape)
        if plan is None:
            plan = plans[shape] = _row_plan(shape)
            other |= plan[2]
            unknown |= plan[3]
            aliased.update(plan[4])
        tr, ev = {}, {}
        getter, names = plan[5]
        types = set(map(type, vals := getter(r))) if getter else None
        hot = types is not None and types <= _NUMBER  # the hot path for long runs: one C-level pass per row
        if hot and int in types:
            try:  # an int past float's range (a 400-digit value) would overflow the sums below: the slow path
                sum(vals, 0.0)
            except OverflowError:
                hot = False
        if hot:
            tr = dict(zip(names, vals))  # ints (steps) stay ints: the rules only compare and average them
        else:
            for k, name in plan[0]:
                if (x := to_float(r[k])) is not None:
                    tr[name] = x
        for k, name in plan[1]:
            if (x := to_float(r[k])) is not None:
                ev[name] = x
        # sum() is NaN/inf exactly when some value is (or, rarely, on overflow: then the scan finds nothing)
        if tr and not isfinite(sum(tr.values())):
            bad_train.update(k for k, v in tr.items() if not isfinite(v))
        if ev and not isfinite(sum(ev.values())):
            bad_eval.update(k for k, v in ev.items() if not isfinite(v))
        order += 1
        step = tr.pop("step", None)
        if step is None:
            step = ev.pop("step", None)
        ev.pop("step", None)
        if step is None or not math.isfinite(step):
            step = float(order)
            info["steps_inferred"] = True
        if len(tr) <= 2 and tr.keys() <= _CONTEXT_KEYS:  # only epoch/lr: the context of an eval row, not a point
            if ev:
                ev.update(tr)
            tr = {}
        if tr:
            tr["step"] = step
            hist.train.append(tr)
            if hot and hot_plan in (None, plan):
                hot_plan = plan
                hot_vals.append(vals)
            else:
                mixed = True
        if ev:
            ev["step"] = step
            hist.eval.append(ev)
        if not tr and not ev:
            skipped_rows += 1
    used = set().union(*map(dict.keys, hist.train), *map(dict.keys, hist.eval)) if (hist.train or hist.eval) else set()
    resorted = False
    for rows in (hist.train, hist.eval):
        steps = list(map(_STEP, rows))
        if any(map(lt, steps[1:], steps)):
            rows.sort(key=_STEP)
            resorted = True
            info["notes"].append("rows were out of step order; sorted by step")
    if hot_plan is not None and not (mixed or resorted or info.get("steps_inferred")) \
            and len(hot_vals) == len(hist.train) and "step" in hot_plan[5][1]:
        _prefill_columns(hist, hot_plan[5][1], hot_vals)
    _derive(hist, info, beta, used)
    info.update(rows=len(hist.train), eval_rows=len(hist.eval), used_keys=sorted(used),
                aliases={k: v for k, v in sorted(aliased.items())}, other_keys=sorted(other - set(KNOWN)),
                unrecognised_keys=sorted(unknown), skipped_rows=skipped_rows)
    if info.get("steps_inferred"):
        info["notes"].append("no step column: steps are the order of the logged rows")
    if not hist.train and not hist.eval:
        hint = f" (unrecognised keys: {', '.join(sorted(unknown)[:8])})" if unknown else ""
        raise PrefpilotError(f"no preference metrics found in {info.get('source') or 'the input'}{hint}: expected "
                             "keys like loss, rewards/margins, rewards/accuracies, logps/chosen",
                             code="no_metrics")
    return hist


def _prefill_columns(hist: History, names: tuple, vals: list[tuple]) -> None:
    """Fill the series cache by transposing the value tuples (in C) when every train row has one shape."""
    cols = list(zip(*vals))
    last = {n: i for i, n in enumerate(names)}  # a repeated name (alias + canonical): the last one wins, as in dict()
    steps = list(cols[last["step"]])
    for n, i in last.items():
        if n != "step":
            hist._cols[(n, "train")] = (steps, list(cols[i]))


def _derive(hist: History, info: dict, beta: float | None, used: set) -> None:
    """Fill rewards from policy/reference log-probs, and margins from rewards, when a trainer logged only those."""
    derived_rewards = derived_margins = False
    has_ref = bool({"ref_logps/chosen", "ref_logps/rejected"} & used)
    if not (has_ref or {"rewards/chosen", "rewards/rejected"} <= used):
        return
    for split, rows in (("train", hist.train), ("eval", hist.eval)):
        if not has_ref and all(map(contains, rows, repeat("rewards/margins"))):
            continue  # margins already logged everywhere: nothing to derive
        for r in rows:
            for side in ("chosen", "rejected"):
                lp, ref = r.get(f"logps/{side}"), r.get(f"ref_logps/{side}")
                if f"rewards/{side}" not in r and lp is not None and ref is not None:
                    r[f"rewards/{side}"] = (beta or 0.1) * (lp - ref)
                    derived_rewards = True
            if "rewards/margins" not in r and "rewards/chosen" in r and "rewards/rejected" in r:
                r["rewards/margins"] = r["rewards/chosen"] - r["rewards/rejected"]
                derived_margins = True
            if not math.isfinite(sum(r.values())):
                hist.nonfinite[split].update(k for k, v in r.items() if not math.isfinite(v))
    if derived_rewards or derived_margins:
        hist._cols.clear()  # rows changed after the columns were cached
    if derived_rewards:
        info["notes"].append(f"rewards computed as beta·(policy − reference log-prob) with beta={beta or 0.1}")
    if derived_margins:
        info["notes"].append("rewards/margins computed as rewards/chosen − rewards/rejected")
