"""The real-log corpus: logs copied from public bug reports, trainer_state.json files and model cards
(tests/real_logs/, each with its source URL and a hand-written label in labels.yaml)."""
import pytest

from prefpilot.cli import main as cli
from prefpilot.diagnosis import diagnose_source
from real_log_labels import HERE, LABELS, check


def test_corpus_is_large_labelled_and_sourced():
    assert len(LABELS) >= 30
    files = {p.name for p in HERE.iterdir() if p.is_file()} - {"labels.yaml"}
    assert files == {lab["file"] for lab in LABELS}, "every file has a label and every label a file"
    for lab in LABELS:
        assert lab["source"].startswith("https://") and lab["truth"] in ("healthy", "broken")
        assert lab["verdict"] in ("healthy", "problems", "inconclusive")
    assert sum(lab["truth"] == "healthy" for lab in LABELS) >= 10, "healthy runs too, not only broken ones"


@pytest.mark.parametrize("label", LABELS, ids=[lab["file"] for lab in LABELS])
def test_real_log_label(label):
    report = diagnose_source(str(HERE / label["file"]), is_path=True, config=label.get("config"))
    assert check(label, report) == [], report["summary"]


def test_cli_exit_status_follows_the_verdict():
    assert cli(["diagnose", str(HERE / "trl-4023-grad-zero-rewards-zero.txt")]) == 3
    assert cli(["diagnose", str(HERE / "hub-shenaoz-iter1-trainer_state.json")]) == 4
