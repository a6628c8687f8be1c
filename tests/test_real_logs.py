"""The real-log corpus: logs copied from public bug reports, trainer_state.json files and model cards
(tests/real_logs/, each with its source URL and a hand-written label in labels.yaml)."""
import pytest

from prefpilot.cli import main as cli
from prefpilot.diagnosis import diagnose_source
from prefpilot.errors import PrefpilotError
from real_log_labels import HELDOUT, HELDOUT_DIR, HERE, LABELS, check


def test_corpus_is_large_labelled_and_sourced():
    everything = LABELS + HELDOUT
    assert len(everything) >= 80
    # the issue asks for a quarter held out. Each fresh batch must come from sources no earlier batch used, and once
    # scored it is spent (merged into the tuned split); the third batch was 41 logs (23% of the corpus then), the
    # fourth only 10, when the searchers' shared look-up allowance ran out. The README gives the real figures.
    assert len(HELDOUT) >= 10, "a held-out split, scored once"
    assert sum(lab["file"].endswith(".ipynb") for lab in everything) >= 10, "saved notebooks, as users pass them"
    held = {p.name for p in HELDOUT_DIR.iterdir()} - {"labels.yaml"}
    assert held == {lab["file"] for lab in HELDOUT}
    assert not held & {lab["file"] for lab in LABELS}
    files = {p.name for p in HERE.iterdir() if p.is_file()} - {"labels.yaml"}
    assert files == {lab["file"] for lab in LABELS}, "every file has a label and every label a file"
    for lab in LABELS:
        assert lab["source"].startswith("https://") and lab["truth"] in ("healthy", "broken")
        assert lab["verdict"] in ("healthy", "problems", "inconclusive")
    assert sum(lab["truth"] == "healthy" for lab in LABELS) >= 10, "healthy runs too, not only broken ones"


@pytest.mark.parametrize("label", LABELS, ids=[lab["file"] for lab in LABELS])
def test_real_log_label(label):
    try:
        report = diagnose_source(str(HERE / label["file"]), is_path=True, config=label.get("config"))
    except PrefpilotError as exc:
        assert label.get("known_miss"), f"refused: {exc}"
        return
    if label.get("known_miss"):  # a recorded disagreement: it must still be one (else drop known_miss)
        assert check(label, report) != [], "this known miss now holds: remove known_miss from its label"
    else:
        assert check(label, report) == [], report["summary"]


# Measured once each, blind, after the rules were done (bench/real_logs.py --heldout): the fifth held-out batch (13
# public logs, labelled on 2026-12-08 by sessions that never ran prefpilot on them) scored 11/13 (85%), the sixth (12)
# 8/12 (67%). Misses that a reader change then fixed (tinker-cookbook's Rich tables, NeMo-RL's bullet lists) moved to
# the tuned split with their files, so the 22 here are the part no change was aimed at: 19/22 passed blind (a KTO
# notebook flat at 0.50 and a minimind excerpt read healthy; a KTO tutorial at lr 2e-4 labelled healthy gets
# lr_out_of_range). Earlier blind batches: fourth 8/10, third 36/41,
# second 30/38 (the README lists them). This guards the rate against regressions; raising it needs rules judged on
# the tuned split and then a fresh batch, not fixes aimed here.
HELDOUT_FLOOR = 19 / 22


def test_held_out_split_holds_at_its_reported_rate():
    """The held-out logs were labelled and set aside before the rules were changed with the rest: a rate, not a
    per-file assertion, because a miss there is reported (bench/real_logs.py --heldout), never fixed against it."""
    misses = []
    for label in HELDOUT:
        try:
            report = diagnose_source(str(HELDOUT_DIR / label["file"]), is_path=True, config=label.get("config"))
        except PrefpilotError as exc:  # a log the reader refuses is a miss
            misses.append(f"{label['file']}: refused ({exc})")
            continue
        wrong = check(label, report)
        if wrong:
            misses.append(f"{label['file']}: {wrong}")
    assert 1 - len(misses) / len(HELDOUT) >= HELDOUT_FLOOR - 1e-9, misses


def test_no_notebook_or_card_with_a_table_is_refused():
    """The tuned split only: a held-out file the reader refuses would be a miss counted in the held-out rate, fixed
    only with a reader change judged on tuned files."""
    for folder, labels in ((HERE, LABELS),):
        for label in labels:
            if label["file"].endswith((".ipynb", ".md")):
                assert cli(["diagnose", str(folder / label["file"])]) in (0, 3, 4), label["file"]


def test_cli_exit_status_follows_the_verdict():
    assert cli(["diagnose", str(HERE / "trl-4023-grad-zero-rewards-zero.txt")]) == 3
    assert cli(["diagnose", str(HERE / "hub-shenaoz-iter1-trainer_state.json")]) == 4
