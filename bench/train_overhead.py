"""Training overhead of prefpilot against a plain hand-written TRL script, measured side by side.

    python bench/train_overhead.py [--repeat 3] [--steps 30]

On one small local model (random init, hidden 256, 4 layers; no hub) and the builtin data:
  1. median step time, `prefpilot train` vs plain `trl.DPOTrainer` with identical settings, run alternately
     (goal: ratio <= 1.02);
  2. DPO vs SimPO step time and peak RSS (SimPO holds no reference model);
  3. TRL's default gradient checkpointing (on) vs prefpilot's choice (off when memory allows).
Each measurement runs in its own process (peak RSS from getrusage).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def build_model(path: Path) -> Path:
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from tiny_model import build_tiny_model
    small = build_tiny_model(path.parent / "tok")
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(small)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def child(kind: str, method: str, gc: bool, steps: int, model: str, out: str) -> None:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.t, self.times, self.tokens = None, [], None

        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "num_tokens" in logs:
                self.tokens = logs["num_tokens"]  # TRL's running count: both runs must train on the same tokens

    timer = StepTimer()
    common = {"max_steps": steps, "per_device_train_batch_size": 4, "learning_rate": 1e-5, "max_length": 64,
              "save_strategy": "no", "logging_steps": 1, "report_to": "none", "bf16": False, "use_cpu": True,
              "activation_checkpointing": gc, "seed": 0}
    if kind == "prefpilot":
        from prefpilot.train.trainer import train
        cfg = {"method": method, "model_name_or_path": model, "dataset_path": "builtin:arith-prefs", **common}
        if method == "simpo":
            cfg.update(beta=2.0, gamma_beta_ratio=0.5)
        with tempfile.TemporaryDirectory() as d:
            train(cfg, d, progress=False, callbacks=[timer])
    else:  # the script a user would write against TRL directly
        from plain_trl import plain_trainer
        with tempfile.TemporaryDirectory() as d:
            plain_trainer(method, model, common, d, [timer]).train()
    times = timer.times[3:]  # drop warm-up steps
    Path(out).write_text(json.dumps({"median_step_s": statistics.median(times), "tokens": timer.tokens,
                                     "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))


def measure(kind, method, gc, steps, model) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRL_EXPERIMENTAL_SILENCE="1", OMP_NUM_THREADS="2")
        subprocess.run([sys.executable, __file__, "--child", kind, method, str(int(gc)), str(steps), model, f.name],
                       check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return json.loads(Path(f.name).read_text())


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--child", nargs=6)
    a = ap.parse_args(argv)
    if a.child:
        kind, method, gc, steps, model, out = a.child
        return child(kind, method, gc == "1", int(steps), model, out)
    model = str(build_model(Path(tempfile.gettempdir()) / "prefpilot-bench-model" / "m"))
    res = {k: [] for k in ("prefpilot_dpo", "plain_dpo", "prefpilot_simpo", "dpo_gc_on")}
    for _ in range(a.repeat):  # alternate so drift affects every variant alike
        res["prefpilot_dpo"].append(measure("prefpilot", "dpo", False, a.steps, model))
        res["plain_dpo"].append(measure("plain", "dpo", False, a.steps, model))
        res["prefpilot_simpo"].append(measure("prefpilot", "simpo", False, a.steps, model))
        res["dpo_gc_on"].append(measure("prefpilot", "dpo", True, a.steps, model))
    for ours, plain in zip(res["prefpilot_dpo"], res["plain_dpo"]):  # the same work, or the ratio means nothing
        assert ours["tokens"] == plain["tokens"], f"token counts differ: prefpilot {ours['tokens']}, TRL {plain['tokens']}"
    med = {k: statistics.median(x["median_step_s"] for x in v) for k, v in res.items()}
    rss = {k: max(x["peak_rss_gb"] for x in v) for k, v in res.items()}
    summary = {
        "median_step_s": med, "peak_rss_gb": rss, "tokens_per_run": res["plain_dpo"][0]["tokens"],
        "prefpilot_over_plain_each_repeat": [round(a["median_step_s"] / b["median_step_s"], 3)
                                             for a, b in zip(res["prefpilot_dpo"], res["plain_dpo"])],
        "prefpilot_over_plain_trl": med["prefpilot_dpo"] / med["plain_dpo"],
        "simpo_over_dpo_step_time": med["prefpilot_simpo"] / med["prefpilot_dpo"],
        "simpo_over_dpo_peak_rss": rss["prefpilot_simpo"] / rss["prefpilot_dpo"],
        "trl_default_gc_on_over_ours_off": med["dpo_gc_on"] / med["prefpilot_dpo"],
    }
    print(json.dumps(summary, indent=2))
    print(f"prefpilot/plain TRL step time: {summary['prefpilot_over_plain_trl']:.3f} (goal <= 1.02); "
          f"SimPO/DPO step {summary['simpo_over_dpo_step_time']:.2f}, peak RSS {summary['simpo_over_dpo_peak_rss']:.2f}; "
          f"gradient checkpointing on/off {summary['trl_default_gc_on_over_ours_off']:.2f}")
    return summary


if __name__ == "__main__":
    main()
