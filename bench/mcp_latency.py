"""MCP over stdio, as an agent sees it: cold start to the first tools/list, then p50/p95 of tool calls.

    python bench/mcp_latency.py [--calls 50]

Starts the real server (`prefpilot mcp`) with the SDK's client. Side by side in the same run: the cold start
of a bare Python that only imports the mcp SDK's server module, so the share that is the SDK's own import
time is visible. diagnose_run is timed on a 2,000-step metrics file, with and without the PNG plot.
"""
import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def write_metrics(path: Path, n: int = 2000):
    rng = random.Random(0)
    with open(path, "w") as fh:
        for i in range(1, n + 1):
            t = i / n
            fh.write(json.dumps({"step": i, "loss": 0.69 - 0.3 * (1 - math.exp(-3 * t)) + rng.gauss(0, 0.03),
                                 "rewards/margins": 1.5 * (1 - math.exp(-3 * t)) + rng.gauss(0, 0.08),
                                 "rewards/accuracies": 0.5 + 0.3 * t, "logps/chosen": -120.0,
                                 "logps/rejected": -125 - 10 * t, "grad_norm": 5.0}) + "\n")


async def measure(ws: Path, calls: int) -> dict:
    params = StdioServerParameters(command=sys.executable, args=["-m", "prefpilot.cli", "mcp", "--workspace", str(ws)],
                                   cwd=str(ws))
    t0 = time.perf_counter()
    async with Client(params) as client:
        await client.list_tools()
        cold = time.perf_counter() - t0
        cfg = {"model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "dataset_path": "builtin:arith-prefs",
               "beta": 0.1, "learning_rate": 5e-7}
        out = {"cold_start_to_tools_list_s": round(cold, 3)}
        for name, args in (("validate_config", {"config": cfg}),
                           ("diagnose_run", {"metrics_path": "metrics.jsonl", "plot": False}),
                           ("diagnose_run+plot", {"metrics_path": "metrics.jsonl", "plot": True})):
            tool = name.split("+")[0]
            await client.call_tool(tool, args)  # warm: first-call imports (jsonschema, matplotlib)
            times = []
            for _ in range(calls if "plot" not in name else max(5, calls // 5)):
                t = time.perf_counter()
                r = await client.call_tool(tool, args)
                times.append(time.perf_counter() - t)
                assert not r.is_error, r.content
            out[f"{name}_p50_ms"] = round(1000 * statistics.median(times), 1)
            out[f"{name}_p95_ms"] = round(1000 * pct(times, 0.95), 1)
    return out


def bare_sdk_import_s(repeat=3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import mcp.server.mcpserver"], check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3, help="cold starts to take the median of")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        ws = Path(d)
        write_metrics(ws / "metrics.jsonl")
        results = [anyio.run(measure, ws, a.calls) for _ in range(a.repeat)]
    out = {k: statistics.median(r[k] for r in results) for k in results[0]}
    out["bare_python_import_mcp_sdk_s"] = round(bare_sdk_import_s(), 3)
    out["cold_start_vs_bare_sdk_import"] = round(out["cold_start_to_tools_list_s"] / out["bare_python_import_mcp_sdk_s"], 2)
    for k, v in out.items():
        print(f"{k:36} {v}")
    return out


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
