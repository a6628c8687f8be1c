"""The real-log corpus as a table: each public log, its hand label, what `prefpilot diagnose` says, pass/fail.

    python bench/real_logs.py [--markdown]

Prints one row per log of tests/real_logs/ and the pass rate (the README quotes it).
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "backend"), str(ROOT / "tests")]
from prefpilot.diagnosis import diagnose_source  # noqa: E402
from real_log_labels import HERE, LABELS, check  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    a = ap.parse_args(argv)
    passed = 0
    rows = []
    for lab in LABELS:
        r = diagnose_source(str(HERE / lab["file"]), is_path=True, config=lab.get("config"))
        wrong = check(lab, r)
        passed += not wrong
        said = ", ".join(f"{f['id']} ({f['severity']})" for f in r["findings"] if f["id"] != "too_few_points")
        rows.append([lab["file"], lab["truth"], r["method"], r["verdict"], said or "—", "pass" if not wrong
                     else "FAIL: " + "; ".join(wrong)])
    if a.markdown:
        print("| log | truth | method | verdict | findings | label |\n|---|---|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        for row in rows:
            print("  ".join(f"{c:<{w}}" for c, w in zip(row, (52, 8, 6, 13, 60, 4))))
    broken = sum(lab["truth"] == "broken" for lab in LABELS)
    print(f"\n{passed}/{len(LABELS)} labels hold ({100 * passed / len(LABELS):.0f}%); "
          f"{broken} broken and {len(LABELS) - broken} healthy runs")
    return 0 if passed == len(LABELS) else 1


if __name__ == "__main__":
    sys.exit(main())
