"""The validator's memory estimate beside the measured peak RSS of a real CPU run (SmolLM2-135M-Instruct).

    python bench/memory_estimate.py [--steps 6] [--only dpo simpo ...]

For each setting a child process trains with prefpilot and reports its peak resident memory (ru_maxrss);
the parent computes prefpilot's estimate for the same config on this machine. Goal: estimate within 25%
of the measured peak. The estimate plans for full-length sequences, so the data here is long enough to be
truncated at max_length (otherwise the batch is only as long as its longest pair).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

SETTINGS = {
    "dpo b4 L128": {"method": "dpo", "per_device_train_batch_size": 4, "max_length": 128,
                    "activation_checkpointing": False},
    "dpo b8 L256": {"method": "dpo", "per_device_train_batch_size": 8, "max_length": 256,
                    "activation_checkpointing": False},
    "dpo b8 L256 ckpt": {"method": "dpo", "per_device_train_batch_size": 8, "max_length": 256,
                         "activation_checkpointing": True},
    "simpo b4 L128": {"method": "simpo", "per_device_train_batch_size": 4, "max_length": 128,
                      "activation_checkpointing": False},
}
BASE = {"model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "learning_rate": 1e-6,
        "save_strategy": "no", "logging_steps": 1}


def long_pairs(path: Path, method: str, n: int = 64) -> Path:
    """Pairs long enough that every sequence is cut at max_length.

    DPO: a long prompt, cut from the left (truncation_mode keep_end) so the answers survive. SimPO: TRL's CPO
    trainer keeps the prompt's start, so a long prompt would leave empty completions (average log-prob 0/0);
    there the prompt is short and the answers are long.
    """
    words = "the quick brown fox jumps over the lazy dog while counting preference pairs".split()
    long = lambda i, k: " ".join(words[(i + j) % len(words)] for j in range(k))  # noqa: E731
    with open(path, "w") as fh:
        for i in range(n):
            if method == "dpo":
                row = {"prompt": long(i, 700), "chosen": f"Answer {i} is correct.", "rejected": f"Answer {i} is wrong."}
            else:
                row = {"prompt": f"Question {i}?", "chosen": "Yes. " + long(i, 400), "rejected": "No. " + long(i + 3, 400)}
            fh.write(json.dumps(row) + "\n")
    return path


def child(cfg_json: str, out: str) -> None:
    from prefpilot.train.trainer import train
    cfg = json.loads(cfg_json)
    with tempfile.TemporaryDirectory() as d:
        train(cfg, d, progress=False)
    Path(out).write_text(json.dumps({"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--child", nargs=2)
    ap.add_argument("--only", nargs="*", help="run only the settings whose name contains one of these")
    a = ap.parse_args(argv)
    if a.child:
        return child(*a.child)
    from prefpilot.config.validate import validate
    results = {}
    tmp = Path(tempfile.mkdtemp())
    data = {m: long_pairs(tmp / f"{m}.jsonl", m) for m in ("dpo", "simpo")}
    for name, setting in SETTINGS.items():
        if a.only and not any(o in name for o in a.only):
            continue
        cfg = {**BASE, **setting, "max_steps": a.steps, "dataset_path": str(data[setting["method"]])}
        if setting["method"] == "dpo":
            cfg["truncation_mode"] = "keep_end"  # cut the prompt from the left, keep the answers
        est = validate(cfg)["estimate"]
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            env = dict(os.environ, HF_HUB_OFFLINE="1", TRL_EXPERIMENTAL_SILENCE="1")
            subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg), f.name], check=True, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            peak = json.loads(Path(f.name).read_text())["peak_rss_gb"]
        results[name] = {"estimate_gb": est["total_gb"], "peak_rss_gb": round(peak, 3),
                         "estimate_over_peak": round(est["total_gb"] / peak, 3), "parts_gb": est["parts_gb"]}
        print(f"{name:17} estimate {est['total_gb']:.2f} GB  measured peak RSS {peak:.2f} GB  "
              f"ratio {est['total_gb'] / peak:.2f}  (goal 0.75-1.25)")
    worst = max(abs(r["estimate_over_peak"] - 1) for r in results.values())
    print(f"worst deviation {worst:.0%}")
    return {"settings": results, "worst_deviation": round(worst, 3)}


if __name__ == "__main__":
    main()
