"""How long diagnosis takes on a long run: 100,000 logged steps, as metrics.jsonl text and as a list of dicts.

    python bench/diagnose_bench.py [--steps 100000] [--repeat 3]

Prints the median wall time of: parsing + all rules from JSONL text, rules from a list of dicts, and
json.loads of the same lines alone (the floor any JSONL reader pays), side by side.
"""
import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))
from prefpilot.diagnosis import diagnose  # noqa: E402


def history(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(1, n + 1):
        t = i / n
        rows.append({"step": i, "loss": 0.69 - 0.3 * (1 - math.exp(-3 * t)) + rng.gauss(0, 0.03),
                     "rewards/margins": 1.5 * (1 - math.exp(-3 * t)) + rng.gauss(0, 0.08) if i > 1 else 0.0,
                     "rewards/accuracies": sum(rng.random() < 0.5 + 0.3 * t for _ in range(8)) / 8,
                     # step 1 logs exactly 0 rewards in TRL (policy = reference before any update)
                     "rewards/chosen": 0.1 if i > 1 else 0.0, "rewards/rejected": -0.1 if i > 1 else 0.0,
                     "logps/chosen": -120 - 2 * t,
                     "logps/rejected": -125 - 15 * t, "grad_norm": 6 + rng.gauss(0, 1), "learning_rate": 5e-7,
                     "epoch": t})
        if i % 500 == 0:
            rows.append({"step": i, "eval_loss": 0.7 - 0.3 * t, "eval_rewards/margins": 1.3 * t})
    return rows


def timed(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args(argv)
    rows = history(a.steps)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    t_text, rep = timed(lambda: diagnose(text, method="dpo"), a.repeat)
    t_list, _ = timed(lambda: diagnose(rows, method="dpo"), a.repeat)
    t_json, _ = timed(lambda: [json.loads(x) for x in text.splitlines()], a.repeat)
    print(f"steps logged: {a.steps} ({len(rows)} rows incl. eval), findings: "
          f"{[f['id'] for f in rep['findings']] or 'none'}")
    print(f"diagnose(metrics.jsonl text): {t_text:.3f} s (goal < 1 s)")
    print(f"diagnose(list of dicts):      {t_list:.3f} s")
    print(f"json.loads of the lines only: {t_json:.3f} s  -> parsing+rules / json floor = {t_text / t_json:.2f}x")
    return {"diagnose_100k_text_s": round(t_text, 3), "diagnose_100k_list_s": round(t_list, 3),
            "diagnose_vs_json_floor": round(t_text / t_json, 2)}


if __name__ == "__main__":
    main()
