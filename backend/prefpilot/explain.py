"""Explain one loss type from the skills: its formula, when to use it, a config, starting hyperparameters.

Everything comes from the bundled skill files (the same text a person reads and the
tests check), so the CLI, the MCP tool and the docs cannot disagree.
"""
from __future__ import annotations

import re

from .errors import PrefpilotError
from .skills import bundle_root, load_table

DPO_DOC = "trl-fine-tuning/references/dpo-variants.md"
SIMPO_DOC = "simpo/references/loss-functions.md"
# SimPO loss_type -> (section heading prefix, formula tag)
SIMPO_SECTIONS = {"sigmoid": ("Sigmoid", "simpo"), "hinge": ("Hinge", "simpo_hinge")}
BLOCK = re.compile(r"```(?P<lang>[\w-]+)(?: (?P<tag>[\w_-]+))?\n(?P<body>.*?)\n```", re.S)


def _sections(rel: str) -> dict[str, str]:
    text = (bundle_root() / "skills" / "mlops" / rel).read_text(encoding="utf-8")
    parts = re.split(r"^## ", text, flags=re.M)[1:]
    return {p.split("\n", 1)[0].strip(): p.split("\n", 1)[1] if "\n" in p else "" for p in parts}


def _describe(heading: str, body: str, source_file: str) -> dict:
    formula = next((m.group("body") for m in BLOCK.finditer(body) if m.group("lang") == "formula"), None)
    configs = [m.group("body") for m in BLOCK.finditer(body) if m.group("lang") == "yaml"]
    prose = re.sub(r"\n{3,}", "\n\n", BLOCK.sub("", body)).strip()
    return {"heading": heading, "formula": formula, "explanation": prose, "config_examples": configs,
            "source_file": source_file}


def loss_types(method: str) -> list[str]:
    if method == "simpo":
        return list(SIMPO_SECTIONS)
    return list(load_table("dpo")["loss_types"])


def explain_loss(loss_type: str | None = None, method: str | None = None) -> dict:
    """Formula (as a Python expression per pair), explanation, config examples and starting values.

    Without a loss_type: the method's default (sigmoid, for DPO as for SimPO), with the others listed."""
    if loss_type is None:
        out = explain_loss("sigmoid", method or "dpo")
        others = [t for t in loss_types(out["method"]) if t != "sigmoid"]
        out["note"] = (f"no loss_type given: this is {out['method'].upper()}'s default; the others are "
                       f"{', '.join(others)} (`prefpilot explain TYPE --method {out['method']}`)")
        return out
    lt = str(loss_type).strip().lower()
    if method is None:
        method = "simpo" if lt == "simpo" else "dpo"
    if method not in ("dpo", "simpo"):
        raise PrefpilotError(f"method {method!r}: use dpo or simpo", code="bad_method")
    if method == "simpo":
        lt = "sigmoid" if lt == "simpo" else lt
        if lt not in SIMPO_SECTIONS:
            raise PrefpilotError(f"SimPO loss_type {loss_type!r}: use one of {', '.join(SIMPO_SECTIONS)}",
                                 code="unknown_loss_type")
        prefix, tag = SIMPO_SECTIONS[lt]
        sections = _sections(SIMPO_DOC)
        heading = next(h for h in sections if h.startswith(prefix))
        out = _describe(heading, sections[heading], f"skills/mlops/{SIMPO_DOC}")
        table = load_table("simpo")
        out.update(loss_type=lt, method="simpo", formula_tag=tag,
                   starting_hyperparameters=[{k: r[k] for k in ("model", "beta", "gamma_beta_ratio",
                                                                 "learning_rate", "source")} for r in table["rows"]],
                   typical_ranges=table["ranges"])
        return out
    table = load_table("dpo")
    if lt not in table["loss_types"]:
        raise PrefpilotError(f"DPO loss_type {loss_type!r} is not one TRL's DPOTrainer accepts; use one of "
                             f"{', '.join(table['loss_types'])} (or method simpo)", code="unknown_loss_type")
    sections = _sections(DPO_DOC)
    heading = next((h for h in sections if h.split()[0] == lt), None)
    if heading is None:  # pragma: no cover - a test keeps the doc and the table in step
        raise PrefpilotError(f"no section for {lt} in {DPO_DOC}", code="doc_missing")
    out = _describe(heading, sections[heading], f"skills/mlops/{DPO_DOC}")
    out.update(loss_type=lt, method="dpo", formula_tag=lt, starting_hyperparameters=[table["loss_types"][lt]],
               typical_ranges=table["ranges"])
    return out
