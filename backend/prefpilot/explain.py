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
    if method in OWN_LOSSES:
        return list(OWN_LOSSES[method])
    return list(load_table("dpo")["loss_types"])


ORPO_KTO_DOC = "trl-fine-tuning/references/orpo-kto.md"
# ORPO has one loss; KTO's loss_type values (KTOConfig's choices) -> the prefix of their formula tags
OWN_LOSSES = {"orpo": {"orpo": ""}, "kto": {"kto": "", "apo_zero_unpaired": "apo_zero_unpaired_"}}


def _explain_orpo_kto(lt: str, method: str) -> dict:
    if lt not in OWN_LOSSES[method]:
        raise PrefpilotError(f"{method.upper()} loss_type {lt!r}: use one of {', '.join(OWN_LOSSES[method])}",
                             code="unknown_loss_type")
    sections = _sections(ORPO_KTO_DOC)
    heading = next(h for h in sections if h.startswith(method.upper() + ":"))
    body = sections[heading]
    out = _describe(heading, body, f"skills/mlops/{ORPO_KTO_DOC}")
    forms = {(m.group("lang"), m.group("tag")): m.group("body") for m in BLOCK.finditer(body)}
    if method == "orpo":
        out["formula"], tag = forms[("orpo-formula", None)], "orpo"
    else:
        prefix = OWN_LOSSES["kto"][lt]
        out["formula"] = "; ".join(f"{side} row: {forms[('kto-formula', prefix + side)]}"
                                   for side in ("desirable", "undesirable"))
        tag = prefix + "desirable|undesirable"
    table = load_table(method)
    out.update(loss_type=lt, method=method, formula_tag=tag, typical_ranges=table["ranges"],
               starting_hyperparameters=[{k: r[k] for k in ("model", "beta", "learning_rate", "source")}
                                         for r in table["rows"]])
    return out


def explain_loss(loss_type: str | None = None, method: str | None = None) -> dict:
    """Formula (as a Python expression per pair), explanation, config examples and starting values.

    Without a loss_type: the method's default (sigmoid, for DPO as for SimPO), with the others listed."""
    if loss_type is None and method in OWN_LOSSES:
        return _explain_orpo_kto(method, method)
    if loss_type is None:
        out = explain_loss("sigmoid", method or "dpo")
        others = [t for t in loss_types(out["method"]) if t != "sigmoid"]
        out["note"] = (f"no loss_type given: this is {out['method'].upper()}'s default; the others are "
                       f"{', '.join(others)} (`prefpilot explain TYPE --method {out['method']}`)")
        return out
    lt = str(loss_type).strip().lower()
    if method is None:
        method = ("simpo" if lt == "simpo" else "orpo" if lt == "orpo" else
                  "kto" if lt in OWN_LOSSES["kto"] else "dpo")
    if method in OWN_LOSSES:
        return _explain_orpo_kto(lt, method)
    if method not in ("dpo", "simpo"):
        raise PrefpilotError(f"method {method!r}: use dpo, simpo, orpo or kto", code="bad_method")
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
