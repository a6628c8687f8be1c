"""Diagnose a preference run from its logged metrics: ``diagnose(history) -> report``.

Light (no torch): parse.py reads any log format, rules.py holds the catalogue,
plot.py draws the curves (matplotlib, imported only when a plot is asked for).
"""
from __future__ import annotations

import gc
from functools import lru_cache
from pathlib import Path

import yaml

from ..errors import PrefpilotError
from .parse import History, load_history
from .rules import CATALOGUE, Ctx

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@lru_cache(maxsize=1)
def catalogue() -> dict:
    """findings.yaml from the preference-diagnostics skill: ids, severities, thresholds, sources."""
    from ..skills import bundle_root
    path = bundle_root() / "skills" / "mlops" / "preference-diagnostics" / "references" / "findings.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def run_config_near(path) -> dict | None:
    """The config.yaml of the run dir that ``path`` is (or is inside), if any."""
    p = Path(path)
    for d in (p, p.parent, p.parent.parent, p.parent.parent.parent):
        f = d / "config.yaml"
        if d.is_dir() and f.is_file():
            try:
                cfg = yaml.safe_load(f.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError):
                return None
            return cfg if isinstance(cfg, dict) else None
    return None


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


def diagnose(source, *, method: str | None = None, config: dict | None = None, beta: float | None = None,
             gamma: float | None = None) -> dict:
    """Findings for a run's metrics.

    ``source``: a run dir, a metrics.jsonl / trainer_state.json / CSV / log file path, pasted text,
    a list of metric dicts or a trainer_state dict (or a parsed :class:`History`).
    ``config``: the run's config (found beside the metrics when omitted) sets method, β, γ and the
    learning rate the remedies start from.
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
    hist = source if isinstance(source, History) else load_history(source, beta=beta or (config or {}).get("beta"))
    info = hist.info
    if method is None:
        method = (config or {}).get("method")
    if method is None:
        method = "simpo" if "nll_loss" in info.get("used_keys", []) else "dpo"
        info.setdefault("notes", []).append(f"method not given: assumed {method} from the logged keys")
    if method not in ("dpo", "simpo"):
        raise PrefpilotError(f"method {method!r}: use dpo or simpo", code="bad_method")
    cfg = dict(config or {"method": method, "model_name_or_path": DEFAULT_MODEL, "dataset_path": "builtin:arith-prefs"})
    cfg["method"] = method
    if beta is not None:
        cfg["beta"] = beta
    if gamma is not None:
        cfg["simpo_gamma"] = gamma
    if method == "simpo" and "simpo_gamma" not in cfg:
        from ..config.normalize import normalize
        cfg = normalize(cfg)[0]

    ctx = Ctx(hist=hist, method=method, cfg=cfg, table=catalogue(), found={})
    for fid, rule in CATALOGUE.items():
        f = rule(ctx)
        if f is not None:
            ctx.found[fid] = f
    findings = list(ctx.found.values())
    _check_remedies(findings, cfg)
    order = {"error": 0, "warning": 1, "info": 2}
    findings.sort(key=lambda f: order[f["severity"]])
    problems = [f for f in findings if f["severity"] in ("error", "warning")]
    last_step = hist.train[-1]["step"] if hist.train else (hist.eval[-1]["step"] if hist.eval else 0)
    if problems:
        summary = f"{len(problems)} problem(s) in {int(last_step)} steps: " + "; ".join(
            f"{f['id']} ({f['severity']}, steps {f['steps'][0]:g}-{f['steps'][1]:g})" if f["steps"] else f["id"]
            for f in problems)
    else:
        summary = f"healthy: none of the {len(CATALOGUE)} checks fired over {int(last_step)} steps"
        if findings:
            summary += " (" + ", ".join(f["id"] for f in findings) + " noted)"
    return {"method": method, "steps": int(last_step), "healthy": not problems, "findings": findings,
            "summary": summary, "parsed": info}


def diagnose_source(source, *, is_path: bool, method=None, config=None, beta=None, gamma=None, plot=None) -> dict:
    """What the CLI and the MCP tool call: read a path (run dir or file) or text, diagnose, optionally plot.

    ``plot``: a PNG path or a binary file object; the report gets ``plot`` set to the path when one was written.
    """
    if config is None and is_path:
        config = run_config_near(source)
    hist = load_history(Path(source) if is_path else source, beta=beta or (config or {}).get("beta"))
    report = diagnose(hist, method=method, config=config, beta=beta, gamma=gamma)
    if plot is not None:
        from .plot import plot as draw
        written = draw(hist, report, plot)
        if written is not None:
            report["plot"] = str(written)
    return report


__all__ = ["diagnose", "diagnose_source", "load_history", "History", "catalogue"]
