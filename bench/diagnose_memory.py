"""Peak memory of `prefpilot diagnose` per input format, as a multiple of the input's size.

    python bench/diagnose_memory.py [--mib 16] [--formats repr,jsonl,console,csv]

Writes one log of each format (about --mib MiB) into a temporary folder and runs the real CLI on it
in a child process (`prefpilot diagnose FILE --json`), reading the child's peak RSS from os.wait4
(the kernel's ru_maxrss for that one process). A tiny log of the same format gives the interpreter's
own footprint (imports), so the table shows both the raw peak/input ratio and the part the input
costs: (peak - baseline) / input. Formats:
  repr     one line: a Python repr of {'log_history': [{...}, ...]} (print(trainer.state.__dict__))
  jsonl    metrics.jsonl, one JSON object per line (TRL keys)
  console  a TRL console log: tqdm progress lines and a {'loss': ...} dict per logging step
  csv      a W&B-style CSV export (Step, train/loss, train/rewards/margins, ...)
"""
import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNNER = "import sys; from prefpilot.cli import main; sys.exit(main(sys.argv[1:]))"
KEYS = ("loss", "grad_norm", "learning_rate", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
        "rewards/margins", "logps/chosen", "logps/rejected", "epoch")


def row(i: int, rng: random.Random) -> dict:
    t = i / 1e5
    return {"loss": round(0.69 - 0.3 * (1 - math.exp(-3 * t)) + rng.gauss(0, 0.03), 4),
            "grad_norm": round(6 + rng.gauss(0, 1), 4), "learning_rate": 5e-07,
            "rewards/chosen": round(0.1 + rng.gauss(0, 0.01), 4), "rewards/rejected": round(-0.1 + rng.gauss(0, 0.01), 4),
            "rewards/accuracies": round(min(1.0, 0.5 + t), 4), "rewards/margins": round(0.2 + rng.gauss(0, 0.02), 4),
            "logps/chosen": round(-120 - 2 * t, 3), "logps/rejected": round(-125 - 15 * t, 3),
            "epoch": round(t, 4), "step": i}


def write(fmt: str, path: Path, size: int) -> int:
    """Write about ``size`` bytes of ``fmt`` to ``path``; returns the number of rows."""
    rng = random.Random(0)
    n, written = 0, 0
    with open(path, "w", encoding="utf-8") as fh:
        if fmt == "repr":
            fh.write("{'log_history': [")
        if fmt == "csv":
            fh.write("Step," + ",".join(f"train/{k}" for k in KEYS) + "\n")
        while written < size:
            n += 1
            r = row(n, rng)
            if fmt == "repr":
                line = (", " if n > 1 else "") + repr(r)
            elif fmt == "jsonl":
                line = json.dumps(r) + "\n"
            elif fmt == "console":
                bar = f"{100 * n // 200000:3d}%|          | {n}/200000 [00:{n % 60:02d}<05:00,  2.10it/s]\n"
                line = bar + repr({k: v for k, v in r.items() if k != "step"}) + "\n"
            else:
                line = f"{n}," + ",".join(str(r[k]) for k in KEYS) + "\n"
            fh.write(line)
            written += len(line)
        if fmt == "repr":
            fh.write("], 'global_step': %d}\n" % n)
    return n


def peak_rss(path: Path) -> tuple[int, int, float]:
    """(peak RSS in bytes, exit status, seconds) of `prefpilot diagnose path --json` in a child process."""
    import time
    env = {**os.environ, "PYTHONPATH": str(ROOT / "backend") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, "diagnose", str(path), "--json"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace").strip()
    if proc.returncode not in (0, 3, 4):
        print(f"  {path.name}: exit {proc.returncode}: {err.splitlines()[-1] if err else ''}", file=sys.stderr)
    kib = usage.ru_maxrss if sys.platform != "darwin" else usage.ru_maxrss // 1024  # Linux: KiB; macOS: bytes
    return kib * 1024, proc.returncode, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=float, default=16, help="input size per format in MiB (default 16)")
    ap.add_argument("--formats", default="repr,jsonl,console,csv")
    a = ap.parse_args(argv)
    size = int(a.mib * (1 << 20))
    fmts = a.formats.split(",")
    suffix = {"repr": ".txt", "jsonl": ".jsonl", "console": ".log", "csv": ".csv"}
    print(f"prefpilot diagnose, peak RSS per format ({a.mib:g} MiB inputs; baseline = the same format, 20 rows)")
    print(f"{'format':8} {'input MiB':>9} {'rows':>8} {'peak MiB':>9} {'base MiB':>9} {'peak/input':>10} "
          f"{'(peak-base)/input':>17} {'exit':>4} {'s':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in fmts:
            small, big = Path(tmp) / f"small-{fmt}{suffix[fmt]}", Path(tmp) / f"big-{fmt}{suffix[fmt]}"
            write(fmt, small, 2000)
            rows = write(fmt, big, size)
            base, _, _ = peak_rss(small)
            peak, rc, secs = peak_rss(big)
            real = big.stat().st_size
            print(f"{fmt:8} {real / 2**20:9.1f} {rows:8d} {peak / 2**20:9.0f} {base / 2**20:9.0f} "
                  f"{peak / real:9.1f}x {(peak - base) / real:16.1f}x {rc:4d} {secs:6.1f}", flush=True)
            big.unlink()


if __name__ == "__main__":
    main()
