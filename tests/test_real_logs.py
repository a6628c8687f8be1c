"""The real-log corpus: logs copied from public bug reports, trainer_state.json files and model cards
(tests/real_logs/, each with its source URL and a hand-written label in labels.yaml)."""
from pathlib import Path

import pytest
import yaml

from prefpilot.cli import main as cli
from prefpilot.diagnosis import diagnose_source
from prefpilot.diagnosis.rules import PLUMBING

HERE = Path(__file__).parent / "real_logs"
LABELS = yaml.safe_load((HERE / "labels.yaml").read_text(encoding="utf-8"))


def run(label):
    return diagnose_source(str(HERE / label["file"]), is_path=True, config=label.get("config"))


def test_corpus_is_large_labelled_and_sourced():
    assert len(LABELS) >= 30
    files = {p.name for p in HERE.iterdir()} - {"labels.yaml"}
    assert files == {lab["file"] for lab in LABELS}, "every file has a label and every label a file"
    for lab in LABELS:
        assert lab["source"].startswith("https://") and lab["truth"] in ("healthy", "broken")
        assert lab["verdict"] in ("healthy", "problems", "inconclusive")
    assert sum(lab["truth"] == "healthy" for lab in LABELS) >= 10, "healthy runs too, not only broken ones"


@pytest.mark.parametrize("label", LABELS, ids=[lab["file"] for lab in LABELS])
def test_real_log_label(label):
    report = run(label)
    found = {f["id"]: f for f in report["findings"]}
    assert not report["parsed"].get("rule_errors"), report["parsed"]["rule_errors"]
    assert report["verdict"] == label["verdict"], report["summary"]
    for fid in label.get("expect", []):
        assert fid in found, f"{fid} expected: {report['summary']}"
    for fid in label.get("forbid", []):
        assert found.get(fid, {}).get("severity") not in ("error", "warning"), f"{fid} must not warn"
    if label.get("method"):
        assert report["method"] == label["method"], report["method_source"]
    if label["truth"] == "healthy":  # a published healthy run never gets a warning or an error
        assert all(f["severity"] == "info" for f in report["findings"]), report["summary"]
    for f in report["findings"]:  # plumbing is never blamed on the learning rate
        if f["id"] in PLUMBING:
            assert not any("learning_rate" in r["change"] for r in f["remedies"]), f


def test_cli_exit_status_follows_the_verdict():
    assert cli(["diagnose", str(HERE / "trl-4023-grad-zero-rewards-zero.txt")]) == 3
    assert cli(["diagnose", str(HERE / "hub-shenaoz-iter1-trainer_state.json")]) == 4
