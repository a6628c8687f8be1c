"""Run every benchmark and write one table of figures (Markdown and JSON).

    python bench/run_all.py [--quick] [--out bench/results]

Each figure is a ratio or a latency measured side by side in one run (see each script's docstring).
CI does not run this; the README's table is copied from its output.
"""
import argparse
import contextlib
import io
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def latency(argv: list[str], repeat: int) -> float:
    """Median wall time of a CLI command in a fresh process (what a user or agent waits for)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def quiet(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats and steps (a smoke run)")
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args(argv)
    q = a.quick
    rows = []

    def add(figure, value, goal, command):
        rows.append({"figure": figure, "value": value, "goal": goal, "command": command})
        print(f"{figure:55} {value}", flush=True)

    import sync_bench
    r = quiet(sync_bench.main, ["--repeat", "3" if q else "9"])
    add("sync: first install of 200 skills / cp -r", f"{r['install_over_cp']:.2f}×", "≤ 3×", "bench/sync_bench.py")
    add("sync: no-op re-sync of 200 skills", f"{r['noop_resync_s']:.3f} s", "≤ 0.3 s", "bench/sync_bench.py")

    import tempfile
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "c.yaml"
        cfg.write_text("model_name_or_path: HuggingFaceTB/SmolLM2-135M-Instruct\ndataset_path: builtin:arith-prefs\n")
        metrics = Path(d) / "m.jsonl"
        import diagnose_bench
        metrics.write_text("".join(json.dumps(x) + "\n" for x in diagnose_bench.history(2000)))
        n = 3 if q else 7
        pp = [sys.executable, "-m", "prefpilot.cli"]
        add("validate CLI (fresh process, incl. startup)", f"{latency(pp + ['validate', str(cfg)], n):.2f} s", "—",
            "bench/run_all.py")
        add("plan CLI (fresh process, incl. startup)", f"{latency(pp + ['plan'], n):.2f} s", "—", "bench/run_all.py")
        add("diagnose CLI, 2,000 steps (fresh process)",
            f"{latency(pp + ['diagnose', str(metrics)], n):.2f} s", "—", "bench/run_all.py")
        add("python -c pass (the startup floor)", f"{latency([sys.executable, '-c', 'pass'], n):.2f} s", "—",
            "bench/run_all.py")

    r = quiet(diagnose_bench.main, ["--repeat", "3"])
    add("diagnose(list of 100,000 metric dicts)", f"{r['diagnose_100k_list_s']:.2f} s", "< 1 s",
        "bench/diagnose_bench.py")
    add("diagnose(100,000-line metrics.jsonl text)", f"{r['diagnose_100k_text_s']:.2f} s", "< 1 s",
        "bench/diagnose_bench.py")

    import mcp_latency
    r = quiet(mcp_latency.main, ["--calls", "10" if q else "50", "--repeat", "1" if q else "3"])
    add("MCP cold start to first tools/list (stdio)", f"{r['cold_start_to_tools_list_s']:.2f} s", "< 1 s",
        "bench/mcp_latency.py")
    add("MCP validate_config p50 / p95", f"{r['validate_config_p50_ms']} / {r['validate_config_p95_ms']} ms", "—",
        "bench/mcp_latency.py")
    add("MCP diagnose_run (2,000 steps) p50 / p95", f"{r['diagnose_run_p50_ms']} / {r['diagnose_run_p95_ms']} ms",
        "—", "bench/mcp_latency.py")
    add("MCP diagnose_run with PNG plot p50", f"{r['diagnose_run+plot_p50_ms']} ms", "—", "bench/mcp_latency.py")

    import train_overhead
    r = quiet(train_overhead.main, ["--repeat", "2" if q else "6", "--steps", "20" if q else "60", "--extras"])
    for key, label in (("step", "step time"), ("end_to_end", "end to end"), ("startup", "start-up")):
        x = r["prefpilot_over_plain"][key]
        add(f"train {label}: prefpilot / plain TRL DPOTrainer", f"{x['median']:.3f} ({x['min']:.3f}-{x['max']:.3f})",
            {"step": "≤ 1.03", "end_to_end": "≤ 1.05"}.get(key, "—"), "bench/train_overhead.py")
    add("train step time: SimPO / DPO", f"{r['simpo_over_dpo_step_time']:.2f}", "—", "bench/train_overhead.py")
    add("train step time: gradient checkpointing on / off", f"{r['trl_default_gc_on_over_ours_off']:.2f}", "—",
        "bench/train_overhead.py")

    import memory_estimate
    r = quiet(memory_estimate.main, ["--steps", "2" if q else "3"])  # the peak is reached by step 2
    for name, s in r["settings"].items():
        add(f"memory estimate / peak RSS, SmolLM2 {name}", f"{s['estimate_over_peak']:.2f}", "0.75–1.25",
            "bench/memory_estimate.py")

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine(), "cpus": __import__("os").cpu_count(),
            "date": time.strftime("%Y-%m-%d"), "quick": q}
    (out / "results.json").write_text(json.dumps({"meta": meta, "figures": rows}, indent=1))
    md = ["| figure | value | goal | command |", "|---|---|---|---|"]
    md += [f"| {r['figure']} | {r['value']} | {r['goal']} | `python {r['command']}` |" for r in rows]
    (out / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"\nwritten: {out / 'results.md'}, {out / 'results.json'}")


if __name__ == "__main__":
    main()
