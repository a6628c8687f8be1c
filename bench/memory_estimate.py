"""The validator's memory estimate beside the measured peak RSS of a real CPU run (SmolLM2-135M-Instruct).

    python bench/memory_estimate.py [--steps 6]

For each setting a child process trains with prefpilot and reports its peak resident memory (ru_maxrss);
the parent computes prefpilot's estimate for the same config on this machine. Goal: estimate within 25%
of the measured peak. The batch is padded to max_length so the activation term matches the setting.
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
    "dpo b4 L128": {"method": "dpo", "per_device_train_batch_size": 4, "max_length": 128},
    "dpo b8 L256": {"method": "dpo", "per_device_train_batch_size": 8, "max_length": 256},
    "simpo b4 L128": {"method": "simpo", "per_device_train_batch_size": 4, "max_length": 128, "beta": 2.0},
}
BASE = {"model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "dataset_path": "builtin:arith-prefs",
        "learning_rate": 1e-6, "save_strategy": "no", "logging_steps": 1, "padding_free": False,
        "pad_to_multiple_of": None}


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
    a = ap.parse_args(argv)
    if a.child:
        return child(*a.child)
    from prefpilot.config.validate import validate
    results = {}
    for name, setting in SETTINGS.items():
        cfg = {**BASE, **setting, "max_steps": a.steps}
        cfg = {k: v for k, v in cfg.items() if v is not None}
        cfg.pop("pad_to_multiple_of", None)
        est = validate(cfg)["estimate"]
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            env = dict(os.environ, HF_HUB_OFFLINE="1", TRL_EXPERIMENTAL_SILENCE="1")
            subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg), f.name], check=True, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            peak = json.loads(Path(f.name).read_text())["peak_rss_gb"]
        results[name] = {"estimate_gb": est["total_gb"], "peak_rss_gb": round(peak, 3),
                         "estimate_over_peak": round(est["total_gb"] / peak, 3), "parts_gb": est["parts_gb"]}
        print(f"{name:14} estimate {est['total_gb']:.2f} GB  measured peak RSS {peak:.2f} GB  "
              f"ratio {est['total_gb'] / peak:.2f}  (goal 0.75-1.25)")
    worst = max(abs(r["estimate_over_peak"] - 1) for r in results.values())
    print(f"worst deviation {worst:.0%}")
    return {"settings": results, "worst_deviation": round(worst, 3)}


if __name__ == "__main__":
    main()
