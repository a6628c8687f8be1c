"""Training speed on a CUDA GPU: prefpilot vs plain TRL, DPO and SimPO, SmolLM2-135M-Instruct in bf16.

    python bench/gpu_train.py [--steps 60] [--batch 16] [--max-length 512]

Prints the GPU name, tokens/s, peak GPU memory and model FLOPs utilisation (MFU) for each variant, measured
one after another in the same process group. MFU = 6 · params · tokens/s ÷ peak bf16 FLOP/s (the policy's
forward+backward; the reference forward of DPO is extra work not counted, so DPO's MFU reads low).
Exits with a message on a machine without CUDA. CI does not run it.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# dense bf16 peak (no sparsity), from NVIDIA's data sheets
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12}


def peak_flops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def child(kind, method, steps, batch, max_length, out):
    import torch
    from transformers import TrainerCallback

    class Meter(TrainerCallback):
        def __init__(self):
            self.t = None
            self.times, self.tokens = [], []
            self.last_tokens = 0

        def on_step_begin(self, args, state, control, **kw):
            torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.t)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "num_tokens" in logs:
                self.tokens.append(logs["num_tokens"] - self.last_tokens)
                self.last_tokens = logs["num_tokens"]

    meter = Meter()
    common = {"max_steps": steps, "per_device_train_batch_size": batch, "learning_rate": 1e-6,
              "max_length": max_length, "save_strategy": "no", "logging_steps": 1, "report_to": "none",
              "bf16": True, "activation_checkpointing": False, "seed": 0}
    model = "HuggingFaceTB/SmolLM2-135M-Instruct"
    torch.cuda.reset_peak_memory_stats()
    if kind == "prefpilot":
        from prefpilot.train.trainer import train
        cfg = {"method": method, "model_name_or_path": model, "dataset_path": "builtin:arith-prefs", **common}
        if method == "simpo":
            cfg.update(beta=2.0, gamma_beta_ratio=0.5)
        with tempfile.TemporaryDirectory() as d:
            train(cfg, d, progress=False, callbacks=[meter])
    else:
        from plain_trl import plain_trainer
        from prefpilot.train.models import resolve_model
        path, _ = resolve_model(model)
        with tempfile.TemporaryDirectory() as d:
            plain_trainer(method, path, common, d, [meter], dtype=torch.bfloat16).train()
    skip = 5
    step_s = statistics.median(meter.times[skip:])
    tok_per_step = statistics.median(meter.tokens[skip:]) if meter.tokens else None
    Path(out).write_text(json.dumps({"median_step_s": step_s, "tokens_per_step": tok_per_step,
                                     "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9}))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--child", nargs=6)
    a = ap.parse_args(argv)
    if a.child:
        kind, method, steps, batch, max_length, out = a.child
        return child(kind, method, int(steps), int(batch), int(max_length), out)
    try:
        import torch
        if not torch.cuda.is_available():
            raise RuntimeError
    except (ImportError, RuntimeError):
        print("no CUDA GPU here: bench/gpu_train.py measures GPU training and has nothing to do")
        return None
    name = torch.cuda.get_device_name(0)
    params = 134.5e6
    peak = peak_flops(name)
    print(f"GPU: {name}  (bf16 peak {peak / 1e12:.0f} TFLOP/s)" if peak else f"GPU: {name} (peak unknown)")
    results = {}
    for method in ("dpo", "simpo"):
        for kind in ("plain", "prefpilot"):
            with tempfile.NamedTemporaryFile(suffix=".json") as f:
                env = dict(os.environ, HF_HUB_OFFLINE="1", TRL_EXPERIMENTAL_SILENCE="1")
                subprocess.run([sys.executable, __file__, "--child", kind, method, str(a.steps), str(a.batch),
                                str(a.max_length), f.name], check=True, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                r = json.loads(Path(f.name).read_text())
            tps = r["tokens_per_step"] / r["median_step_s"] if r["tokens_per_step"] else None
            r["tokens_per_s"] = tps
            r["mfu"] = 6 * params * tps / peak if tps and peak else None
            results[f"{kind}_{method}"] = r
            print(f"{kind:9} {method:5}  step {r['median_step_s'] * 1000:7.1f} ms  "
                  f"{tps or 0:10.0f} tokens/s  peak {r['peak_gpu_gb']:.2f} GB  "
                  f"MFU {100 * (r['mfu'] or 0):.1f}%")
    for m in ("dpo", "simpo"):
        ratio = results[f"prefpilot_{m}"]["median_step_s"] / results[f"plain_{m}"]["median_step_s"]
        print(f"{m}: prefpilot / plain TRL step time {ratio:.3f}")
    print(json.dumps({"gpu": name, **results}, indent=1, default=str))
    return results


if __name__ == "__main__":
    main()
