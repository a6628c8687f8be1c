"""Diagnose a preference run from its logged metrics: ``diagnose(history) -> report``.

Light (no torch): parse.py reads any log format, rules.py holds the catalogue,
plot.py draws the curves (matplotlib, imported only when a plot is asked for).
"""
from __future__ import annotations

import gc
import math
import re
from functools import lru_cache
from pathlib import Path

import yaml

from ..config.load import safe_yaml
from ..errors import PrefpilotError
from .blocks import single
from .parse import History, load_history
from .rules import CATALOGUE, Ctx, num

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


# a loss logged under the method's own name
_NAMED_LOSS = re.compile(r"(?:train[/_])?(dpo|orpo|kto|simpo|cpo)[_ ]loss")


@lru_cache(maxsize=1)
def catalogue() -> dict:
    """findings.yaml from the preference-diagnostics skill: ids, severities, thresholds, sources."""
    from ..skills import bundle_root
    path = bundle_root() / "skills" / "mlops" / "preference-diagnostics" / "references" / "findings.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def run_config_near(path, roots=None) -> dict | None:
    """The config.yaml of the run dir that ``path`` is (or is inside), if any.

    ``roots``: folders the search must stay inside (the MCP server's workspace); None = anywhere."""
    p = Path(path)
    for d in (p, p.parent, p.parent.parent, p.parent.parent.parent):
        f = d / "config.yaml"
        if roots is not None and not any(d.resolve() == r or r in d.resolve().parents for r in roots):
            break  # climbed out of the workspace
        if d.is_dir() and f.is_file() and not f.is_symlink():
            try:
                cfg = safe_yaml(f.read_text(encoding="utf-8"), str(f))
            except (OSError, yaml.YAMLError, PrefpilotError):
                return None
            return cfg if isinstance(cfg, dict) else None
    return None


METHODS = ("dpo", "simpo", "cpo", "orpo", "kto")
UNKNOWN = "unknown"  # the evidence does not say: only the rules that hold for every method run
# Keys only one trainer logs: how a pasted log tells which trainer wrote it.
ORPO_KEYS = {"log_odds_ratio", "log_odds_chosen", "odds_ratio_loss"}
PREFERENCE_KEYS = {"rewards/margins", "rewards/accuracies", "rewards/chosen", "logps/chosen"}
_CODE_METHODS = {"dpo", "orpo", "kto", "cpo", "simpo"}


def _ratio_test(hist: History):
    """Are the rewards β × the policy's own log-probs (reference-free: SimPO/CPO/ORPO), or relative to a reference
    (DPO/KTO)? Returns ("free", β, per_token) or ("reference", None, None) or None when the log cannot tell."""
    for split in ("train", "eval"):
        pairs = []
        for side in ("chosen", "rejected"):  # both answers: one logged row then gives two ratios
            rs, rc = hist.series(f"rewards/{side}", split)
            ls, lp = hist.series(f"logps/{side}", split)
            by_step = dict(zip(ls, lp))
            stride = max(1, len(rc) // 200)  # a sample decides: a long run must not pay a pass over every row
            pairs += [(c, by_step[s]) for s, c in zip(rs[::stride], rc[::stride])
                      if s in by_step and math.isfinite(c) and math.isfinite(by_step[s]) and by_step[s] != 0]
        if len(pairs) < 2:
            continue
        ratios = sorted(c / lp for c, lp in pairs)
        med = ratios[len(ratios) // 2]
        spread = max(abs(x - med) for x in ratios)
        # from 3 ratios a 2% agreement decides; from two (one row) only a near-exact one: a DPO reward divided by
        # the policy's log-prob matches its partner's by chance far less often than that
        if med > 0 and spread <= (0.02 if len(pairs) >= 3 else 0.002) * med:
            return "free", med, _median_abs_logp(hist) < 10
        if len(pairs) >= 3 and (med <= 0 or spread > 0.2 * abs(med)):
            return "reference", None, None
    return None


def _median_abs_logp(hist: History) -> float | None:
    """The median |logps/chosen|: per-token averages (SimPO/ORPO) are a few nats, DPO's sums are tens or more."""
    _, lp = hist.series("logps/chosen", "train")
    finite = sorted(abs(v) for v in (lp or hist.series("logps/chosen", "eval")[1]) if math.isfinite(v))
    return finite[len(finite) // 2] if finite else None


def detect_method(hist: History, config: dict | None, method: str | None) -> tuple[str, str]:
    """(method, how it was decided). The caller or the config wins; else the evidence in the log decides, and
    with no real evidence the method is "unknown" (never a guess: method-specific rules would then judge the run
    on the wrong scale)."""
    if method:
        return method, "given"
    if config and config.get("method") in METHODS:
        return config["method"], "config"
    info = hist.info
    used = set(info.get("used_keys", []))
    hints = info.get("hints", {})
    if used & ORPO_KEYS:
        return "orpo", f"logged keys ({', '.join(sorted(used & ORPO_KEYS))}: ORPO)"
    if "kl" in used and used & {"rewards/chosen", "rewards/rejected", "logps/chosen"}:
        return "kto", "logged keys (kl beside the rewards: KTO)"
    where = "the notebook's code" if "notebook" in str(info.get("format")) else "the code in the file"
    tagged = single(list(hints.get("tags", [])) + list(hints.get("title", [])))
    code_loss = single(hints.get("loss_type"))
    trainers = set(hints.get("trainers", [])) & _CODE_METHODS
    if len(trainers) == 1:
        m = trainers.pop()
        if m == "cpo" and code_loss == "simpo":
            return "simpo", f"{where} (CPOTrainer with loss_type='simpo')"
        return m, f"{where} ({m.upper()}Trainer/{m.upper()}Config)"
    # a loss logged under the method's own name (tinker-cookbook's dpo_loss, custom loops' orpo_loss)
    named = {m.group(1): raw for raw in info.get("aliases", {})
             for m in [_NAMED_LOSS.fullmatch(str(raw).strip().lower())] if m}
    if len(named) == 1:
        (m, raw), = named.items()
        return m, f"the logged key {raw!r} names it"
    ratio = _ratio_test(hist)
    if ratio and ratio[0] == "free":
        info["beta_from_log"] = ratio[1]
        how = f"rewards = {ratio[1]:.3g} × the policy's {'per-token' if ratio[2] else 'summed'} log-probs (no " \
              "reference model)"
        if tagged in ("orpo", "simpo", "cpo"):
            return tagged, f"{how}, and the card names {tagged.upper()}"
        if not ratio[2]:
            return "cpo", f"{how}: CPO"
        if "nll_loss" in used:
            return "simpo", f"{how} with nll_loss: SimPO through TRL's CPO trainer"
        return UNKNOWN, f"{how}: SimPO or ORPO, and nothing else in the file says which"
    if ratio and ratio[0] == "reference":
        extra = " (nll_loss too: an SFT term such as rpo_alpha; nll_loss alone does not make a run CPO)" \
            if "nll_loss" in used else ""
        return "dpo", f"rewards move relative to a reference model, not with the policy's log-probs: DPO{extra}"
    if "nll_loss" in used and "logps/chosen" in used:
        logp = _median_abs_logp(hist)
        if logp is not None and logp < 10:  # DPO (even with an SFT term) logs summed log-probs
            return "simpo", "logged keys (nll_loss with per-token log-probs and no odds ratios: SimPO through " \
                            "TRL's CPO trainer)"
    trl_spelled = not set(info.get("aliases", {}).values()) & PREFERENCE_KEYS
    if used & PREFERENCE_KEYS and "nll_loss" not in used and trl_spelled:
        return "dpo", ("logged keys (TRL's rewards/logps without nll_loss, kl or odds ratios: TRL's other preference "
                       "trainers each log one of those)")
    if tagged:
        return tagged, f"the model card's tags/title ({tagged})"
    if code_loss == "simpo" and not hints.get("trainers"):
        return "simpo", f"{where} (loss_type='simpo')"
    logged = sorted(used & (PREFERENCE_KEYS | {"loss", "nll_loss"}))
    return UNKNOWN, ("no method-specific keys, code, tags or reward scale in the file" +
                     (f" (logged: {', '.join(logged)})" if logged else "") +
                     "; pass --method or --config to run that method's checks")


def _check_remedies(findings: list[dict], cfg: dict) -> None:
    """Keep only remedies that, applied to the run's config, add no validation error.

    Errors the config already has (say fp16 when diagnosing a GPU run's log on a laptop) do not
    count against a remedy; with a valid config this means the changed config validates.
    """
    from ..config.validate import validate

    def errors(c):
        return {(e["path"], e["code"]) for e in validate(c, complete=False)["errors"]}
    base = errors(cfg)
    for f in findings:
        f["remedies"] = [r for r in f["remedies"] if not r["change"] or errors({**cfg, **r["change"]}) <= base]


# config keys the rules compute with: a value here that is no finite number is left out (with a note), so a
# hand-edited config (beta: .nan, a 400-digit learning_rate) costs its value, not the diagnosis
_NUMERIC_KEYS = ("beta", "learning_rate", "simpo_gamma", "gamma_beta_ratio", "sft_weight", "cpo_alpha", "max_steps",
                 "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps", "lora_r")


def _finite(v) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return abs(v) < 1e300 if isinstance(v, int) else math.isfinite(v)  # an int past float's range overflows


def usable_config(config) -> tuple[dict | None, list[str]]:
    """(the config without the numbers the rules cannot compute with, the keys left out)."""
    if not isinstance(config, dict):
        return None, []
    bad = [k for k in _NUMERIC_KEYS if k in config and config[k] is not None and not _finite(config[k])]
    return {k: v for k, v in config.items() if k not in bad}, bad


def _check_arg(name: str, value) -> None:
    if value is not None and not (_finite(value) and value >= 0):
        raise PrefpilotError(f"{name} must be a finite number ≥ 0, got {str(value)[:40]}", code="bad_argument")


def diagnose(source, *, method: str | None = None, config: dict | None = None, beta: float | None = None,
             gamma: float | None = None) -> dict:
    """Findings for a run's metrics.

    ``source``: a run dir, a metrics.jsonl / trainer_state.json / CSV / log file path, pasted text,
    a list of metric dicts or a trainer_state dict (or a parsed :class:`History`).
    ``config``: the run's config (found beside the metrics when omitted) sets method, β, γ and the
    learning rate the remedies start from; without one they come from the log or stated defaults.
    """
    enabled = gc.isenabled()
    gc.disable()  # ~1e5 short-lived dicts and lists, no cycles: the cyclic GC only costs time here
    try:
        return _diagnose(source, method, config, beta, gamma)
    finally:
        if enabled:
            gc.enable()


def _diagnose(source, method, config, beta, gamma) -> dict:
    if config is None and isinstance(source, (str, Path)) and len(str(source)) < 4096 and "\n" not in str(source):
        try:
            if Path(source).exists():
                config = run_config_near(source)
        except OSError:
            pass
    _check_arg("beta", beta)
    _check_arg("gamma", gamma)
    config, unusable = usable_config(config)
    hist = source if isinstance(source, History) else load_history(source, beta=beta or (config or {}).get("beta"))
    info = hist.info
    if unusable:
        info.setdefault("notes", []).append(f"config {', '.join(unusable)}: not a finite number, left out (the "
                                            "defaults or the log's values are used instead)")
    if method is not None and method not in METHODS:
        raise PrefpilotError(f"method {method!r}: use one of {', '.join(METHODS)}", code="bad_method")
    method, method_source = detect_method(hist, config, method)
    if method == UNKNOWN:
        info.setdefault("notes", []).append(f"method unknown: {method_source}; only the checks that hold for any "
                                            "method ran")
    elif method_source not in ("config", "given"):
        info.setdefault("notes", []).append(f"method {method}: {method_source}")

    cfg = dict(config or {})
    sources = {k: "config" for k in cfg}
    cfg["method"] = method
    if beta is not None:
        cfg["beta"], sources["beta"] = beta, "--beta"
    if gamma is not None:
        cfg["simpo_gamma"], sources["simpo_gamma"] = gamma, "--gamma"
    if method == "simpo" and config:
        from ..config.normalize import normalize
        cfg = normalize(cfg)[0]

    split = "train"
    logged = lambda s: any(hist.series(k, s)[0] for k in PREFERENCE_KEYS)  # noqa: E731  (cached columns)
    if not logged("train") and logged("eval"):
        split = "eval"
        info.setdefault("notes", []).append("only held-out (eval) rows carry rewards/log-probs: the rules read them")
    table = catalogue()
    ctx = Ctx(hist=hist, method=method, cfg=cfg, table=table, split=split, config_given=bool(config),
              sources=sources)
    ran = []
    for fid, rule in CATALOGUE.items():
        applies = table["findings"][fid]["methods"]
        if applies != "all" and method not in applies:  # "unknown" is listed by the rules that hold for any method
            continue
        ran.append(fid)
        try:
            f = rule(ctx)
        except Exception as exc:  # a rule bug must not cost the user the other findings (or show a traceback)
            info.setdefault("rule_errors", []).append(f"{fid}: {type(exc).__name__}: {exc}")
            continue
        if f is not None:
            ctx.found[fid] = f
    findings = list(ctx.found.values())
    if method in ("dpo", "simpo", "orpo", "kto", "cpo"):  # the methods the validator knows: remedies are checked
        base = cfg if config else {"method": method, "model_name_or_path": DEFAULT_MODEL,
                                   "dataset_path": "builtin:arith-prefs", **{k: cfg[k] for k in sources}}
        _check_remedies(findings, base)
    order = {"error": 0, "warning": 1, "info": 2}
    findings.sort(key=lambda f: order[f["severity"]])
    problems = [f for f in findings if f["severity"] in ("error", "warning")]
    rows = ctx.rows
    last_step = rows[-1]["step"] if rows else 0
    lr, lr_src = ctx.lr
    b, b_src = ctx.beta
    report = {"method": method, "method_source": method_source, "steps": num(last_step), "findings": findings,
              "rules_run": ran, "assumed": {"learning_rate": {"value": num(lr), "source": lr_src},
                                            "beta": {"value": num(b), "source": b_src}},
              "parsed": info}
    if isinstance(cfg.get("loss_type"), list) and method == "dpo":
        report["loss_type"] = cfg["loss_type"]
    few = "too_few_points" in ctx.found
    if problems:
        report["verdict"] = "problems"
        report["summary"] = f"{len(problems)} problem(s) in {num(last_step)} steps: " + "; ".join(
            f"{f['id']} ({f['severity']}, steps {f['steps'][0]:g}-{f['steps'][1]:g})" if f["steps"] else f["id"]
            for f in problems)
    elif few:
        report["verdict"] = "inconclusive"
        n = len(rows)
        report["summary"] = (f"inconclusive: {n} logged point(s) are too few for the trend checks and none of the "
                             f"one-row checks fired")
        report["to_decide"] = ctx.found["too_few_points"]["explanation"]
    else:
        report["verdict"] = "healthy"
        which = "method-independent" if method == UNKNOWN else method.upper()
        report["summary"] = f"healthy: none of the {len(ran)} {which} checks fired over {num(last_step)} steps"
        noted = [f["id"] for f in findings]
        if noted:
            report["summary"] += " (" + ", ".join(noted) + " noted)"
    report["healthy"] = report["verdict"] == "healthy"
    return report


def diagnose_source(source, *, is_path: bool, method=None, config=None, beta=None, gamma=None, plot=None,
                    roots=None, max_bytes: int | None = None) -> dict:
    """What the CLI and the MCP tool call: read a path (run dir or file) or text, diagnose, optionally plot.

    ``plot``: a PNG path or a binary file object; the report gets ``plot`` set to the path when one was written.
    ``roots``: the folders a run config may be read from (the MCP workspace); None = beside the metrics.
    ``max_bytes``: the largest log file to read (default 128 MiB or $PREFPILOT_MAX_LOG_BYTES).
    """
    if config is None and is_path:
        config = run_config_near(source, roots)
    _check_arg("beta", beta)
    hist = load_history(Path(source) if is_path else source, beta=beta or (usable_config(config)[0] or {}).get("beta"),
                        max_bytes=max_bytes, roots=[Path(r).resolve() for r in roots] if roots is not None else None)
    report = diagnose(hist, method=method, config=config, beta=beta, gamma=gamma)
    if is_path:
        report = with_evaluation(report, Path(source), roots)
        if "evaluation" not in report:  # no `prefpilot eval` yet: what the evaluations during training found
            report = _with_live_evaluation(report, Path(source), config, roots)
    if plot is not None:
        from .plot import plot as draw
        written = draw(hist, report, plot)
        if written is not None:
            report["plot"] = str(written)
    return report


def _with_live_evaluation(report: dict, source: Path, config, roots) -> dict:
    from .. import rundir
    from ..evaluation.live import with_live_findings
    from .parse import _refusal
    d = source if source.is_dir() else source.parent
    f = d / "metrics.jsonl"
    if not f.is_file() or _refusal(f, [Path(r).resolve() for r in roots] if roots is not None else None):
        return report
    try:
        rows = rundir.read_metrics(d)
    except (OSError, ValueError):
        return report
    cfg = usable_config(config)[0] or {}
    return with_live_findings(report, rows, {**cfg, "method": cfg.get("method", report["method"])})


def with_evaluation(report: dict, source: Path, roots=None) -> dict:
    """Add the run's last `prefpilot eval` (eval/report.json beside the metrics) to a curve diagnosis: its
    findings join the curve ones, and healthy curves with an unhealthy model are said to be exactly that."""
    from ..evaluation.run import read_report
    from .parse import _refusal
    d = source if source.is_dir() else source.parent
    f = d / "eval" / "report.json"
    if not f.is_file() or _refusal(f, [Path(r).resolve() for r in roots] if roots is not None else None):
        return report
    ev = read_report(d)
    if not ev or not isinstance(ev.get("findings"), list):
        return report
    gen = {k: v for k, v in (ev.get("generation") or {}).items() if k not in ("policy", "reference")}
    report["evaluation"] = {"verdict": ev.get("verdict"), "summary": ev.get("summary"), "model": ev.get("model"),
                            "preference_accuracy": ev.get("preference_accuracy"), "before": ev.get("before"),
                            "generation": gen, "best_checkpoint": ev.get("best_checkpoint"), "report": str(f)}
    report["findings"] = report["findings"] + ev["findings"]
    if ev.get("verdict") == "problems":
        if report["verdict"] == "healthy":
            report["summary"] = f"healthy curves, unhealthy model: {ev.get('summary')} (curves: {report['summary']})"
        else:
            report["summary"] += f"; the trained model: {ev.get('summary')}"
        report["verdict"], report["healthy"] = "problems", False
    else:
        report["summary"] += f"; the trained model: {ev.get('summary')}"
    return report


__all__ = ["diagnose", "diagnose_source", "detect_method", "load_history", "History", "catalogue", "METHODS", "UNKNOWN"]
