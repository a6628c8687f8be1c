"""What `prefpilot eval` costs beside the training it judges, on the demo's run, measured in one process.

    python bench/eval_cost.py [--method dpo|simpo] [--prompts 8] [--pairs N] [--repeat 2]

Runs `prefpilot demo` once (SmolLM2-135M-Instruct, builtin terse-prefs, its 20-24 CPU steps; the final model
kept), then evaluates that run `--repeat` times with the given sizes, cold (the reference scored too) and with the
reference's side read from the cache (what each later run of a sweep over the same base model and pairs pays), and
prints the training time (status.json's train_seconds), each evaluation's wall time and its parts (scoring held-out
pairs under the reference and the trained model; greedy generation), and both ratios evaluation / training. The
issue's goal is <= 5%.
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", choices=["dpo", "simpo"], default="dpo")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=None,
                    help="held-out pairs to score (default: prefpilot eval's own default for this run)")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    from prefpilot.demo import run_demo
    from prefpilot.evaluation import engine
    from prefpilot.evaluation.run import evaluate
    work = Path(tempfile.mkdtemp(prefix="prefpilot-eval-bench-"))
    result = run_demo(method=args.method, target=str(work / "skills"), runs_root=str(work / "runs"),
                      keep_model=True, out=lambda *a, **k: None)
    run_dir = Path(result["run_dir"])
    train_s = float(result["status"].get("train_seconds") or 0)
    checked = engine.packing_ok

    def timed(**kw):
        marks = []
        t0 = time.time()
        rep = evaluate(run_dir, pairs="builtin:terse-prefs", prompts=args.prompts, max_pairs=args.pairs,
                       progress=lambda d, t, what: marks.append((what, time.time())), **kw)
        wall, prev, steps = time.time() - t0, t0, {}
        for what, at in marks:
            steps[what] = round(at - prev, 2)
            prev = at
        return rep, wall, steps

    out = {"method": args.method, "train_seconds": train_s, "goal": "<= 0.05"}
    # the same trained model, packed scoring (the default) and plain (one sequence per answer) side by side
    for mode in ("packed", "plain"):
        engine.packing_ok = checked if mode == "packed" else (lambda model, pad_id: False)
        cold = [timed(reference_cache=False) for _ in range(args.repeat)]
        timed()  # fills the reference cache (a sweep's first run)
        warm = [timed() for _ in range(args.repeat)]
        rep = cold[-1][0]
        cold_s = statistics.median(w for _, w, _ in cold)
        warm_s = statistics.median(w for _, w, _ in warm)
        out.update(pairs=rep["pairs"], prompts=rep["prompts"])
        out[mode] = {"eval_seconds_cold": [round(w, 2) for _, w, _ in cold],
                     "eval_seconds_reference_cached": [round(w, 2) for _, w, _ in warm],
                     "eval_over_train": round(cold_s / train_s, 3) if train_s else None,
                     "eval_over_train_reference_cached": round(warm_s / train_s, 3) if train_s else None,
                     "parts_s_cold": cold[-1][2], "parts_s_reference_cached": warm[-1][2]}
    engine.packing_ok = checked
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
