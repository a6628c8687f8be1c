"""Findings judged on the trained model (light: no torch): thresholds from findings.yaml's `evaluation:` table,
the same catalogue the curve findings come from, so the docs and the detector cannot disagree."""
from __future__ import annotations

from ..diagnosis import catalogue
from .metrics import primary_metric


def _finding(table: dict, fid: str, evidence: dict, explanation: str, remedies: list[dict]) -> dict:
    entry = table[fid]
    return {"id": fid, "severity": entry["severity"], "steps": None, "source": "evaluation",
            "evidence": {k: round(v, 4) if isinstance(v, float) else v for k, v in evidence.items()},
            "explanation": explanation, "remedies": remedies, "sources": entry["sources"]}


def _change(cfg: dict, key: str, factor: float | None = None, value=None) -> dict:
    """{key: new} from the run's own value, as the curve remedies do."""
    if value is not None:
        return {key: value}
    old = cfg.get(key)
    return {key: float(f"{old * factor:.3g}")} if isinstance(old, (int, float)) else {}


def judge(report: dict, cfg: dict, train_accuracy: float | None = None) -> list[dict]:
    """Evaluation findings for one evaluated model (``report`` as evaluation.run.evaluate builds it)."""
    table = catalogue()["evaluation"]
    out = []
    gen = report.get("generation") or {}
    ref = gen.get("reference") or {}
    lower_lr = _change(cfg, "learning_rate", 1 / 3)
    earlier = report.get("best_checkpoint") or {}
    keep_best = ([{"change": {"checkpoint": earlier["name"]}, "why": "the best evaluated checkpoint: "
                   + earlier.get("reason", "")}] if earlier and earlier.get("name") != report.get("model") else [])
    if gen:
        t = table["length_exploitation"]["thresholds"]
        ratio = gen.get("length_ratio")
        cap_gain = gen["cap_without_eos_rate"] - ref.get("cap_without_eos_rate", 0.0)
        if (ratio is not None and ratio >= t["length_ratio"]) or cap_gain >= t["cap_rate_gain"]:
            remedies = [{"change": {"method": "simpo"}, "why": "SimPO's reward is per token: length earns nothing"}]
            if cfg.get("method", "dpo") == "dpo" and isinstance(cfg.get("beta"), (int, float)):
                remedies.append({"change": _change(cfg, "beta", 2.0), "why": "a larger β keeps the policy nearer "
                                 "the reference's lengths"})
            out.append(_finding(table, "length_exploitation", {
                "length_ratio": ratio, "policy_mean_tokens": gen["policy"]["mean_length"],
                "reference_mean_tokens": ref.get("mean_length"), "cap_without_eos_rate": gen["cap_without_eos_rate"],
                "reference_cap_without_eos_rate": ref.get("cap_without_eos_rate")},
                f"The policy's greedy completions are {ratio:.2f}× the reference's length"
                f" and fill the cap without EOS in {gen['cap_without_eos_rate']:.0%} of prompts (reference "
                f"{ref.get('cap_without_eos_rate', 0):.0%}): the run rewards length, whatever the margins say.",
                remedies + keep_best))
        t = table["repetition_loops"]["thresholds"]
        if gen["repetition_rate"] >= t["rate"] and gen["repetition_rate"] - ref.get("repetition_rate", 0) >= t["gain"]:
            out.append(_finding(table, "repetition_loops", {
                "repetition_rate": gen["repetition_rate"], "reference_repetition_rate": ref.get("repetition_rate")},
                f"{gen['repetition_rate']:.0%} of the policy's completions loop (the reference: "
                f"{ref.get('repetition_rate', 0):.0%}): the model degenerated, even if its training curves look "
                "healthy.", ([{"change": lower_lr, "why": "degeneration follows too large steps"}] if lower_lr else [])
                + keep_best))
        t = table["missing_eos"]["thresholds"]
        rate = gen["cap_without_eos_rate"]
        if rate >= t["rate"] and rate - ref.get("cap_without_eos_rate", 0) >= t["gain"]:
            out.append(_finding(table, "missing_eos", {
                "cap_without_eos_rate": rate, "reference_cap_without_eos_rate": ref.get("cap_without_eos_rate"),
                "max_new_tokens": report.get("max_new_tokens")},
                f"{rate:.0%} of the policy's completions run to max_new_tokens without an end token (the "
                f"reference: {ref.get('cap_without_eos_rate', 0):.0%}).", keep_best))
        t = table["empty_generations"]["thresholds"]
        empty = gen["empty_rate"]
        if empty >= t["rate"] and empty - ref.get("empty_rate", 0) >= t["gain"]:
            out.append(_finding(table, "empty_generations", {
                "empty_rate": empty, "reference_empty_rate": ref.get("empty_rate")},
                f"{empty:.0%} of the policy's completions are empty (the reference: {ref.get('empty_rate', 0):.0%}): "
                "the model stops answering, whatever its margins say.",
                ([{"change": lower_lr, "why": "too large steps pushed the probability onto EOS"}] if lower_lr else [])
                + keep_best))
    method = report.get("method", "dpo")
    key = primary_metric(method) if method in ("simpo", "cpo", "orpo") or "implicit" in report.get(
        "preference_accuracy", {}) else "summed"
    acc = report.get("preference_accuracy", {}).get(key)
    before = report.get("before", {}).get(key)
    pairs = report.get("pairs", 0)
    t = table["heldout_no_gain"]["thresholds"]
    if acc is not None and pairs >= t["min_pairs"]:
        base = 0.5 if key == "implicit" else before
        if base is not None and acc - base < t["min_gain"]:
            out.append(_finding(table, "heldout_no_gain", {"metric": key, "accuracy": acc, "reference": base,
                                                           "pairs": pairs},
                                f"Held-out {key} accuracy is {acc:.3f} against {base:.3f} for the reference on "
                                f"{pairs} pairs: the run did not learn this preference beyond its training pairs.",
                                [{"change": _change(cfg, "learning_rate", 2.0), "why": "more movement per step"}]
                                if cfg.get("learning_rate") else []))
    t = table["heldout_regression"]["thresholds"]
    rows = [c for c in report.get("checkpoints", []) if c.get("preference_accuracy", {}).get(key) is not None]
    if acc is not None and (train_accuracy is None or train_accuracy >= t["train_accuracy"]):
        peak = max(rows, key=lambda c: c["preference_accuracy"][key], default=None)
        if peak is not None and peak["preference_accuracy"][key] - acc >= t["drop"]:
            out.append(_finding(table, "heldout_regression", {
                "metric": key, "last": acc, "best": peak["preference_accuracy"][key], "best_checkpoint": peak["name"],
                "train_accuracy": train_accuracy},
                f"Held-out {key} accuracy fell from {peak['preference_accuracy'][key]:.3f} at {peak['name']} to "
                f"{acc:.3f} at the end while the training accuracy is {train_accuracy if train_accuracy is not None else '?'}"
                ": the run overfits its training pairs.",
                [{"change": {"checkpoint": peak["name"]}, "why": "its held-out accuracy is the highest"}]))
    return out
