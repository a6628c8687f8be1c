"""The real-log corpus (tests/real_logs/) and the check of one label: shared by its test and bench/real_logs.py.

Two splits: the tuned one (labels.yaml, every label must hold) and the held-out one (heldout/labels.yaml),
set aside at random when the logs arrived and scored only as a rate, never tuned against."""
from pathlib import Path

import yaml

HERE = Path(__file__).parent / "real_logs"
HELDOUT_DIR = HERE / "heldout"
LABELS = yaml.safe_load((HERE / "labels.yaml").read_text(encoding="utf-8"))
HELDOUT = yaml.safe_load((HELDOUT_DIR / "labels.yaml").read_text(encoding="utf-8")) or []


def check(label: dict, report: dict) -> list[str]:
    """What in ``report`` disagrees with the hand-written ``label`` (empty: the label holds)."""
    from prefpilot.diagnosis.rules import PLUMBING
    found = {f["id"]: f for f in report["findings"]}
    wrong = []
    if report["parsed"].get("rule_errors"):
        wrong.append(f"rule errors {report['parsed']['rule_errors']}")
    if report["verdict"] != label["verdict"]:
        wrong.append(f"verdict {report['verdict']}, labelled {label['verdict']}")
    met = set(found)
    if "nan_loss" in found:
        met.add("nonfinite_metrics")  # nan_loss lists every non-finite key
    if found.get("no_gradient", {}).get("severity") == "error":
        met.add("reference_tracks_policy")  # zero rewards from no gradient at all: the cause is reported, not both
    wrong += [f"{fid} expected" for fid in label.get("expect", []) if fid not in met]
    wrong += [f"{fid} must not warn" for fid in label.get("forbid", [])
              if found.get(fid, {}).get("severity") in ("error", "warning")]
    if label.get("method") and report["method"] not in (label["method"], "unknown"):
        wrong.append(f"method {report['method']}, labelled {label['method']}")
    if label["truth"] == "healthy":
        wrong += [f"{f['id']} warns on a healthy run" for f in report["findings"] if f["severity"] != "info"]
    wrong += [f"{f['id']}: a learning-rate remedy for plumbing" for f in report["findings"]
              if f["id"] in PLUMBING and any("learning_rate" in r["change"] for r in f["remedies"])]
    return wrong
