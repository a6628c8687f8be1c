"""Training overhead of prefpilot against a plain hand-written TRL script, measured side by side.

    python bench/train_overhead.py [--repeat 6] [--steps 60] [--threads 1] [--extras]

On one small local model (random init, hidden 256, 4 layers; no hub) and the builtin data, each repeat runs
`prefpilot.train.trainer.train` (what `prefpilot train` calls, imported through the CLI module) and the plain
TRL script of bench/plain_trl.py once each, in fresh processes, in alternating order (ABBA), and compares:
  step time     median wall time of a step (step begin to step end), warm-up steps dropped   goal <= 1.03
  step CPU time the same steps' CPU time (all threads): the quieter view of the work done, blind to time spent
                waiting for a core that another process holds
  end to end    process start to the final model saved, the same steps                     goal <= 1.05
  start-up      process start to the first step's begin (imports, validation, data, model, tokenising)
Ratios are taken within each pair and the median and range over the pairs are reported: the machine's drift
between pairs then cancels. Both runs must report the same token count (TRL's own `num_tokens`), or the bench
fails: a ratio of different work means nothing. `--threads 1` (the default) pins torch to one thread so that
background load on the other core moves the figures less; the ratio is about prefpilot's code, not about
threading. `--extras` adds DPO vs SimPO and gradient checkpointing on vs off (prefpilot only).
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
GOALS = {"step": 1.03, "end_to_end": 1.05}


def build_model(path: Path) -> Path:
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tiny_model import build_tiny_model
    tok = AutoTokenizer.from_pretrained(build_tiny_model(path.parent / "tok"))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def child(kind: str, method: str, gc: bool, steps: int, model: str, out: str, t_spawn: float) -> None:
    """One measured run. Imports happen here, inside the timed process, as they do for a user."""
    if kind == "prefpilot":
        import prefpilot.cli  # noqa: F401  (what `prefpilot train` imports before it trains)
        from prefpilot.train.trainer import train
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.t, self.c, self.times, self.cpu, self.tokens, self.first = None, None, [], [], None, None

        def on_step_begin(self, args, state, control, **kw):
            self.t, self.c = time.perf_counter(), time.process_time()
            if self.first is None:
                self.first = time.time()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t)
            self.cpu.append(time.process_time() - self.c)  # CPU time of all threads: blind to waiting for a core

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "num_tokens" in logs:
                self.tokens = logs["num_tokens"]  # TRL's running count: both runs must train on the same tokens

    timer = StepTimer()
    common = {"max_steps": steps, "per_device_train_batch_size": 4, "learning_rate": 1e-5, "max_length": 64,
              "save_strategy": "no", "logging_steps": 1, "report_to": "none", "bf16": False, "use_cpu": True,
              "activation_checkpointing": gc, "seed": 0}
    with tempfile.TemporaryDirectory() as d:
        if kind == "prefpilot":
            cfg = {"method": method, "model_name_or_path": model, "dataset_path": "builtin:arith-prefs", **common}
            if method == "simpo":
                cfg.update(beta=2.0, gamma_beta_ratio=0.5)
            train(cfg, Path(d) / "run", progress=False, callbacks=[timer])  # saves run/final
        else:  # the script a user would write against TRL directly, saving its model the usual way
            from plain_trl import plain_trainer
            trainer = plain_trainer(method, model, common, d, [timer])
            trainer.train()
            trainer.save_model(str(Path(d) / "final"))
        t_saved = time.time()
    warm = min(3, len(timer.times) - 1)
    Path(out).write_text(json.dumps({
        "step_s": statistics.median(timer.times[warm:]), "step_cpu_s": statistics.median(timer.cpu[warm:]),
        "tokens": timer.tokens,
        "end_to_end_s": t_saved - t_spawn, "startup_s": timer.first - t_spawn,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))


def measure(kind, method, gc, steps, model, threads) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRL_EXPERIMENTAL_SILENCE="1", OMP_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
        t_spawn = time.time()
        subprocess.run([sys.executable, __file__, "--child", kind, method, str(int(gc)), str(steps), model, f.name,
                        repr(t_spawn)], check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return json.loads(Path(f.name).read_text())


def spread(values) -> dict:
    values = sorted(values)
    return {"median": round(statistics.median(values), 3), "min": round(values[0], 3), "max": round(values[-1], 3),
            "each": [round(v, 3) for v in values]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=6, help="pairs of runs (prefpilot, plain TRL), in ABBA order")
    ap.add_argument("--steps", type=int, default=60, help="training steps per run")
    ap.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads in each run")
    ap.add_argument("--extras", action="store_true", help="also DPO vs SimPO, checkpointing on vs off")
    ap.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        kind, method, gc, steps, model, out, t_spawn = a.child
        return child(kind, method, gc == "1", int(steps), model, out, float(t_spawn))
    model = str(build_model(Path(tempfile.gettempdir()) / "prefpilot-bench-model" / "m"))
    pairs = []
    for i in range(a.repeat):
        order = ("prefpilot", "plain") if i % 2 == 0 else ("plain", "prefpilot")
        runs = {kind: measure(kind, "dpo", False, a.steps, model, a.threads) for kind in order}
        ours, plain = runs["prefpilot"], runs["plain"]
        assert ours["tokens"] == plain["tokens"], f"token counts differ: prefpilot {ours['tokens']}, TRL {plain['tokens']}"
        pairs.append(runs)
    ratio = {key: spread([p["prefpilot"][f"{key}_s"] / p["plain"][f"{key}_s"] for p in pairs])
             for key in ("step", "step_cpu", "end_to_end", "startup")}
    absolute = {kind: {key: spread([p[kind][f"{key}_s"] for p in pairs]) for key in ("step", "end_to_end", "startup")}
                for kind in ("prefpilot", "plain")}
    extra_s = spread([p["prefpilot"]["startup_s"] - p["plain"]["startup_s"] for p in pairs])
    summary = {"steps": a.steps, "threads": a.threads, "pairs": a.repeat, "tokens_per_run": pairs[0]["plain"]["tokens"],
               "prefpilot_over_plain": ratio, "seconds": absolute, "startup_extra_s": extra_s,
               "prefpilot_over_plain_trl": ratio["step"]["median"]}  # the figure bench/run_all.py reports
    if a.extras:
        res = {k: [measure("prefpilot", m, gc, a.steps, model, a.threads) for _ in range(max(1, a.repeat // 2))]
               for k, m, gc in (("dpo", "dpo", False), ("simpo", "simpo", False), ("dpo_gc_on", "dpo", True))}
        med = {k: statistics.median(x["step_s"] for x in v) for k, v in res.items()}
        rss = {k: max(x["peak_rss_gb"] for x in v) for k, v in res.items()}
        summary.update(simpo_over_dpo_step_time=med["simpo"] / med["dpo"],
                       simpo_over_dpo_peak_rss=rss["simpo"] / rss["dpo"],
                       trl_default_gc_on_over_ours_off=med["dpo_gc_on"] / med["dpo"])
    print(json.dumps(summary, indent=2))
    for key, label in (("step", "step time"), ("step_cpu", "step CPU time"), ("end_to_end", "end to end"),
                       ("startup", "start-up")):
        r = ratio[key]
        goal = f" (goal <= {GOALS[key]})" if key in GOALS else ""
        print(f"prefpilot / plain TRL, {label}: median {r['median']:.3f}, range {r['min']:.3f}-{r['max']:.3f}{goal}")
    print(f"prefpilot's extra start-up: median {extra_s['median']:.2f} s "
          f"(plain TRL start-up {absolute['plain']['startup']['median']:.2f} s, "
          f"end to end {absolute['plain']['end_to_end']['median']:.2f} s)")
    return summary


if __name__ == "__main__":
    main()
