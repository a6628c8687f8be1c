"""Find and read the bundled skills and their hyperparameter tables.

Used by the planner, ``explain_loss``, the CLI and the MCP resources. The
Markdown hyperparameter tables are rendered from the YAML here, so docs and the
planner read one source.
"""
from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path

import yaml

from .errors import PrefpilotError

BEGIN, END = "<!-- BEGIN GENERATED -->", "<!-- END GENERATED -->"
TABLE_FILES = {"dpo": "trl-fine-tuning/references/hyperparameters.yaml",
               "simpo": "simpo/references/hyperparameters.yaml",
               "orpo": "trl-fine-tuning/references/orpo-hyperparameters.yaml",
               "kto": "trl-fine-tuning/references/kto-hyperparameters.yaml"}


def bundle_root() -> Path:
    """The folder holding ``skills/`` and ``manifest.json``.

    $PREFPILOT_BUNDLE wins; otherwise the repository this package sits in
    (``pip install -e .``, the documented install).
    """
    env = os.environ.get("PREFPILOT_BUNDLE")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2])
    for c in candidates:
        if (c / "skills").is_dir() and (c / "manifest.json").is_file():
            return c
    raise PrefpilotError("cannot find the skill bundle (skills/ and manifest.json): install prefpilot with "
                         "`pip install -e .` from its repository or set PREFPILOT_BUNDLE", code="no_bundle")


def skills_dir() -> Path:
    return bundle_root() / "skills" / "mlops"


@lru_cache(maxsize=1)
def _manifest() -> dict:
    return json.loads((bundle_root() / "manifest.json").read_text(encoding="utf-8"))


def list_skills() -> list[dict]:
    """Name, version, description and files of every bundled skill."""
    return [{"name": s["name"], "version": s["version"], "description": s["description"],
             "files": sorted(s["files"])} for s in _manifest()["skills"]]


def _entry(name: str) -> dict:
    for s in _manifest()["skills"]:
        if s["name"] == name:
            return s
    raise PrefpilotError(f"unknown skill {name!r}; available: {', '.join(s['name'] for s in _manifest()['skills'])}",
                         code="unknown_skill")


def skill_path(name: str) -> Path:
    return bundle_root() / "skills" / _entry(name)["path"]


def read_skill(name: str, file: str = "SKILL.md") -> str:
    """Text of one file of a skill; ``file`` must be one the manifest lists (no path escapes)."""
    files = _entry(name)["files"]
    if file not in files:
        raise PrefpilotError(f"skill {name!r} has no file {file!r}; files: {', '.join(sorted(files))}",
                             code="unknown_file")
    return (skill_path(name) / file).read_text(encoding="utf-8")


@lru_cache(maxsize=8)
def load_table(method: str) -> dict:
    """The hyperparameter table (as data) for ``dpo``, ``simpo``, ``orpo`` or ``kto``."""
    if method not in TABLE_FILES:
        raise PrefpilotError(f"no hyperparameter table for method {method!r}; use one of {', '.join(TABLE_FILES)}",
                             code="bad_method")
    path = bundle_root() / "skills" / "mlops" / TABLE_FILES[method]
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- rendering
def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _table(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def render_table(method: str) -> str:
    t = load_table(method)
    if method == "simpo":
        body = _table(["model", "β", "γ/β", "TRL simpo_gamma", "learning rate", "source"],
                      [[r["model"], r["beta"], r["gamma_beta_ratio"], round(r["beta"] * r["gamma_beta_ratio"], 4),
                        r["learning_rate"], r["source"]] for r in t["rows"]])
    elif method in ("orpo", "kto"):
        shown = ("id", "family", "params_b", "variant", "model", "beta", "learning_rate", "num_train_epochs",
                 "total_batch_size", "source")
        body = _table(["model", "λ (TRL beta)" if method == "orpo" else "β", "learning rate", "epochs", "total batch",
                       "other", "source"],
                      [[r["model"], r["beta"], r["learning_rate"], r.get("num_train_epochs"), r.get("total_batch_size"),
                        ", ".join(f"{k}={_fmt(v)}" for k, v in r.items() if k not in shown) or "—", r["source"]]
                       for r in t["rows"]])
        body += "\n\n" + _table(["TRL default", "value"], [[k, v] for k, v in t["defaults"].items() if k != "source"]) \
            + f"\n\n(TRL defaults: {t['defaults']['source']})"
    else:
        body = _table(["model", "β", "learning rate", "source"],
                      [[r["model"], r["beta"], r["learning_rate"], r["source"]] for r in t["rows"]])
        body += "\n\n### Per loss type\n\n" + _table(
            ["loss_type", "β", "learning rate", "other", "batch", "source"],
            [[lt, v["beta"], v["learning_rate"],
              ", ".join(f"{k}={_fmt(x)}" for k, x in v.items()
                        if k not in ("beta", "learning_rate", "batch_size", "source")) or "—",
              v.get("batch_size"), v["source"]] for lt, v in t["loss_types"].items()])
    ranges = "\n".join(f"- `{k}`: typical {_fmt(r['typical'][0])}–{_fmt(r['typical'][1])}, accepted without a "
                       f"warning {_fmt(r['sane'][0])}–{_fmt(r['sane'][1])}"
                       + (f" ({_fmt(r['lora'][0])}–{_fmt(r['lora'][1])} with LoRA)" if "lora" in r else "")
                       + f" ({r['source']})" for k, r in t["ranges"].items())
    return f"{body}\n\nRanges the validator and the diagnosis check (the same numbers):\n\n{ranges}"


FINDINGS_FILE = "preference-diagnostics/references/findings.yaml"


def render_findings_table() -> str:
    """The diagnosis catalogue as the pathologies reference shows it: a table, then one section per finding."""
    path = bundle_root() / "skills" / "mlops" / FINDINGS_FILE
    t = yaml.safe_load(path.read_text(encoding="utf-8"))

    def methods(f):
        return "all" if f["methods"] == "all" else ", ".join(f["methods"])
    every = {**t["findings"], **t.get("evaluation", {})}  # curve findings, then those judged on the model
    rows = [[f"`{fid}`", f["severity"], f["kind"], methods(f), f["summary"]] for fid, f in every.items()]
    head = (f"Warm-up = the first {t['warmup_fraction']:.0%} of logged training points; start/end levels are means "
            f"over {t['edge_fraction']:.0%} of the points at each end. A row is at the start of training when its "
            f"step is at most {t['start']['max_step']} (or, when the log has no steps, its epoch at most "
            f"{t['start']['max_epoch']}). Signatures fire from one logged row; trend rules need the points their "
            "`min_points` says. Evaluation findings come from `prefpilot eval` (the trained model on held-out pairs "
            "and prompts, beside its reference), not from the curves.\n\n")
    out = [head + _table(["id", "severity", "kind", "methods", "fires when"], rows)]
    for fid, f in every.items():
        lines = [f"## {fid}", f"*{f['severity']}, {f['kind']}, methods: {methods(f)}.* Fires when {f['summary']}.", ""]
        for name, value in f["thresholds"].items():
            shown = value if not isinstance(value, dict) else \
                "; ".join(f"{m} {_fmt(v[0])}–{_fmt(v[1])}" if isinstance(v, list) else f"{m} {_fmt(v)}"
                          for m, v in value.items())
            lines.append(f"- `{name}` = {_fmt(shown) if not isinstance(shown, str) else shown}: {f['explain'][name]}")
        if f["thresholds"]:
            lines.append("")
        lines += [f"Cause: {f['cause']}", "", f"Fix: {f['remedies']}", "", f"Sources: {f['sources']}"]
        out.append("\n".join(lines))
    return "\n\n".join(out)


def render(check: bool = False) -> list[str]:
    """Rewrite the generated tables (hyperparameters.md files, the diagnosis catalogue in pathologies.md).

    With ``check`` nothing is written; returns the files that are (or were) out of date.
    """
    stale = []
    targets = [(bundle_root() / "skills" / "mlops" / Path(rel).with_suffix(".md"), lambda m=method: render_table(m))
               for method, rel in TABLE_FILES.items()]
    targets.append((bundle_root() / "skills" / "mlops" / "preference-diagnostics/references/pathologies.md",
                    render_findings_table))
    for md, renderer in targets:
        text = md.read_text(encoding="utf-8")
        pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
        new = pattern.sub(lambda _m: f"{BEGIN}\n{renderer()}\n{END}", text)
        if new != text:
            stale.append(str(md))
            if not check:
                md.write_text(new, encoding="utf-8")
    return stale


def run_sync(argv: list[str]) -> int:
    """Run the bundle's stdlib sync.py (the one implementation) with these arguments; returns its exit status."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("prefpilot_sync", bundle_root() / "sync.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(list(argv) + ["--bundle", str(bundle_root())])
