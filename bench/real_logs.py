"""The real-log corpus as a table: each public log, its hand label, what `prefpilot diagnose` says, pass/fail.

    python bench/real_logs.py [--markdown] [--heldout | --all] [--failures]

Scores the tuned split (tests/real_logs/labels.yaml) by default; --heldout scores the held-out split
(tests/real_logs/heldout/), which is set aside when logs arrive and scored only once the rules are done;
--all scores both and prints both rates (the README quotes them). A file the tool refuses (exit 2) fails.
"""
import argparse
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "backend"), str(ROOT / "tests")]
from prefpilot.diagnosis import diagnose_source  # noqa: E402
from prefpilot.errors import PrefpilotError  # noqa: E402
from real_log_labels import HELDOUT, HELDOUT_DIR, HERE, LABELS, check  # noqa: E402


def score(labels: list[dict], folder: Path) -> list[list[str]]:
    rows = []
    for lab in labels:
        try:
            r = diagnose_source(str(folder / lab["file"]), is_path=True, config=lab.get("config"))
        except PrefpilotError as exc:
            rows.append([lab["file"], lab["truth"], "-", "refused", str(exc)[:60], f"FAIL: refused ({exc.code})"])
            continue
        wrong = check(lab, r)
        said = ", ".join(f"{f['id']} ({f['severity']})" for f in r["findings"] if f["id"] != "too_few_points")
        rows.append([lab["file"], lab["truth"], r["method"], r["verdict"], said or "—", "pass" if not wrong
                     else "FAIL: " + "; ".join(wrong)])
    return rows


def summary(name: str, labels: list[dict], rows: list[list[str]]) -> str:
    passed = sum(r[-1] == "pass" for r in rows)
    broken = sum(lab["truth"] == "broken" for lab in labels)
    fmts = Counter(str(lab.get("format") or "unstated").split(":")[0] for lab in labels)
    return (f"{name}: {passed}/{len(labels)} labels hold ({100 * passed / max(1, len(labels)):.0f}%); {broken} broken "
            f"and {len(labels) - broken} healthy runs; formats: " + ", ".join(f"{k} {v}" for k, v in fmts.most_common()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    ap.add_argument("--heldout", action="store_true", help="score the held-out split instead of the tuned one")
    ap.add_argument("--all", action="store_true", help="score both splits and print both rates")
    ap.add_argument("--failures", action="store_true", help="print only the rows whose label does not hold")
    a = ap.parse_args(argv)
    splits = [("tuned", LABELS, HERE), ("held-out", HELDOUT, HELDOUT_DIR)]
    if not a.all:
        splits = [splits[1] if a.heldout else splits[0]]
    lines, ok = [], True
    for name, labels, folder in splits:
        rows = score(labels, folder)
        shown = [r for r in rows if r[-1] != "pass"] if a.failures else rows
        if a.markdown:
            print(f"\n{name}:\n\n| log | truth | method | verdict | findings | label |\n|---|---|---|---|---|---|")
            for row in shown:
                print("| " + " | ".join(row) + " |")
        else:
            for row in shown:
                print("  ".join(f"{c:<{w}}" for c, w in zip(row, (52, 8, 7, 13, 60, 4))))
        lines.append(summary(name, labels, rows))
        ok = ok and all(r[-1] == "pass" for r in rows)
    print()
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
