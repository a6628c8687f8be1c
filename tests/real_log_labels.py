"""The real-log corpus (tests/real_logs/) and the check of one label: shared by its test and bench/real_logs.py."""
from pathlib import Path

import yaml

HERE = Path(__file__).parent / "real_logs"
LABELS = yaml.safe_load((HERE / "labels.yaml").read_text(encoding="utf-8"))


def check(label: dict, report: dict) -> list[str]:
    """What in ``report`` disagrees with the hand-written ``label`` (empty: the label holds)."""
    from prefpilot.diagnosis.rules import PLUMBING
    found = {f["id"]: f for f in report["findings"]}
    wrong = []
    if report["parsed"].get("rule_errors"):
        wrong.append(f"rule errors {report['parsed']['rule_errors']}")
    if report["verdict"] != label["verdict"]:
        wrong.append(f"verdict {report['verdict']}, labelled {label['verdict']}")
    wrong += [f"{fid} expected" for fid in label.get("expect", []) if fid not in found]
    wrong += [f"{fid} must not warn" for fid in label.get("forbid", [])
              if found.get(fid, {}).get("severity") in ("error", "warning")]
    if label.get("method") and report["method"] != label["method"]:
        wrong.append(f"method {report['method']}, labelled {label['method']}")
    if label["truth"] == "healthy":
        wrong += [f"{f['id']} warns on a healthy run" for f in report["findings"] if f["severity"] != "info"]
    wrong += [f"{f['id']}: a learning-rate remedy for plumbing" for f in report["findings"]
              if f["id"] in PLUMBING and any("learning_rate" in r["change"] for r in f["remedies"])]
    return wrong
