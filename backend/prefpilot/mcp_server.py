"""prefpilot's MCP server: the agent's way in (official `mcp` SDK, MCPServer API).

Every tool is a thin adapter over a function the CLI calls too; the logic lives in
skills.py, config/, plan.py, runs.py, diagnosis/ and explain.py. This process never
imports torch: training runs in its own process (runs.py). Paths from agents are
confined to the workspace (workspace.py); errors become tool errors with a message,
never a traceback.
"""
from __future__ import annotations

import base64
import functools
import inspect
import io
import json
import logging
import os
from pathlib import Path
import sys
from typing import Annotated, Any, Literal

from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from pydantic import Field
from mcp_types import CallToolResult, ImageContent, TextContent, ToolAnnotations

from .config import limits
from .errors import PrefpilotError
from .workspace import Workspace

log = logging.getLogger("prefpilot.mcp")

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


# ----------------------------------------------------------------------------- output schemas
class SkillInfo(TypedDict):
    name: str
    version: str
    description: str
    files: list[str]


class Finding(TypedDict):
    path: str
    code: str
    message: str
    suggestion: str | None


class ValidationReport(TypedDict, total=False):
    valid: bool
    method: str
    errors: list[Finding]
    warnings: list[Finding]
    normalized: dict[str, Any]
    estimate: dict[str, Any]
    hardware: dict[str, Any]
    notes: list[str]


class DataFinding(TypedDict, total=False):
    id: str
    severity: str
    rows: list[int]
    count: int
    explanation: str
    remedy: str
    mapping: dict[str, str] | None


class DataReport(TypedDict, total=False):
    data: str
    format: str
    trl_format: str | None
    layouts_seen: dict[str, int]
    rows: int
    usable_pairs: int
    columns: list[str]
    mapping: dict[str, str] | None
    findings: list[DataFinding]
    length: dict[str, Any] | None
    tokens: dict[str, Any]
    score: dict[str, Any]
    verdict: str
    summary: str


class ConvertResult(TypedDict, total=False):
    data: str
    out: str
    to: str
    rows: int
    skipped: int
    skipped_rows: list[dict[str, Any]]
    mapping: dict[str, str] | None
    mapped: str


class PlanResult(TypedDict):
    config: dict[str, Any]
    rationale: list[str]
    memory_savers: list[dict[str, Any]]
    estimate: dict[str, Any]
    table_row: dict[str, Any]
    hardware: dict[str, Any]
    warnings: list[Any]


class LaunchResult(TypedDict, total=False):
    run_id: str | None
    run_dir: str | None
    state: str
    dry_run: bool
    report: ValidationReport
    next: str


class RunStatus(TypedDict, total=False):
    run_id: str
    run_dir: str
    state: str
    alive: bool
    step: int | None
    total_steps: int | None
    percent: float | None
    eta_seconds: float | None
    error: str | None
    last_metrics: dict[str, Any] | None
    checkpoint: str | None
    log_tail: list[str] | None
    method: str | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    note: str
    pid: int | None
    verdict: str | None                        # the live diagnosis' verdict so far
    cancel_requested_at: str | None
    resumed_at: str | None
    resumed_from: str | None
    findings: list[dict[str, Any]] | None      # live diagnosis of the history so far
    stopped_by: dict[str, Any] | None          # the finding that stopped the run (config diagnose.stop_on)
    backend: str | None                        # local, or slurm
    job_id: str | None                         # the Slurm job of the run's latest submission
    scheduler: dict[str, Any] | None           # Slurm's view: pending (reason) / running (nodes) / finished (exit)


class RunPage(TypedDict):
    runs: list[dict[str, Any]]
    next_cursor: str | None
    total: int


class RunSummary(TypedDict, total=False):
    run_id: str
    state: str | None
    method: str | None
    step: int | None
    total_steps: int | None
    percent: float | None
    created_at: str | None
    error: str | None


class DiagnosisFinding(TypedDict, total=False):
    id: str
    severity: Literal["error", "warning", "info"]
    steps: list[float] | None
    evidence: dict[str, Any]
    explanation: str
    remedies: list[dict[str, Any]]   # {change, from: {key: {value, source}}, why}
    sources: str


class Diagnosis(TypedDict, total=False):
    method: str
    method_source: str
    loss_type: list[str]
    steps: int
    verdict: Literal["healthy", "problems", "inconclusive"]
    healthy: bool
    rules_run: list[str]
    assumed: dict[str, Any]
    to_decide: str
    findings: list[DiagnosisFinding]
    summary: str
    parsed: dict[str, Any]
    plot: str


class Evaluation(TypedDict, total=False):
    state: Literal["running", "completed", "failed"]   # the background job's state
    progress: dict[str, Any]                           # {done, total, phase} while it runs
    note: str
    error: str
    run_id: str
    run_dir: str
    method: str
    model: str                                        # final, or checkpoint-N: the last model evaluated
    pairs: int
    pairs_source: str
    prompts: int
    max_new_tokens: int
    preference_accuracy: dict[str, float]             # summed, per_token, implicit (DPO family)
    preference_accuracy_se: dict[str, float]          # each accuracy's sampling error (±, Agresti-Coull)
    before: dict[str, float]                          # the same for the reference model
    margins: dict[str, Any]
    generation: dict[str, Any]                        # length_ratio, cap_without_eos_rate, repetition_rate, ...
    checkpoints: list[dict[str, Any]]
    best_checkpoint: dict[str, Any] | None
    findings: list[DiagnosisFinding]
    verdict: Literal["healthy", "problems"]
    summary: str
    samples: list[dict[str, Any]]
    samples_path: str
    plot: str
    plot_error: str
    seconds: float


class LossExplanation(TypedDict):
    loss_type: str
    method: str
    heading: str
    formula: str | None
    formula_tag: str
    explanation: str
    config_examples: list[str]
    starting_hyperparameters: list[dict[str, Any]]
    typical_ranges: dict[str, Any]
    source_file: str


# ----------------------------------------------------------------------------- helpers
def _tool_error(fn_name: str, exc: Exception) -> ToolError:
    """PrefpilotError (and bad-input errors) become tool errors an agent can act on; crashes get a short message."""
    if isinstance(exc, PrefpilotError):
        return ToolError(f"{exc} [{exc.code}]")
    if isinstance(exc, (ValueError, TypeError, OSError)):
        return ToolError(f"{type(exc).__name__}: {exc}")
    log.exception("tool %s crashed", fn_name)  # with its traceback on the server's stderr, never sent
    return ToolError(f"internal error in {fn_name} ({type(exc).__name__}: {exc}); the server log has details")


def tool_errors(fn):
    """Every tool's errors as tool errors (see _tool_error); the description without source indentation."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ToolError:
            raise
        except Exception as exc:
            raise _tool_error(fn.__name__, exc) from None
    wrapper.__doc__ = inspect.cleandoc(fn.__doc__ or "")
    return wrapper


def tool_errors_async(fn):
    """tool_errors for async tools (wait_run)."""
    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except ToolError:
            raise
        except Exception as exc:
            raise _tool_error(fn.__name__, exc) from None
    wrapper.__doc__ = inspect.cleandoc(fn.__doc__ or "")
    return wrapper


# run_status and list_runs may rewrite status.json (a dead trainer is recorded as failed): not read-only
OBSERVE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False)


def _refuse_unknown_arguments(mcp: MCPServer) -> None:
    """An argument a tool does not take is an error naming the ones it takes (the SDK drops it silently: a
    misspelt `grace_second` would run with the default). Wraps each tool's argument validation; the SDK keeps
    tools in a private manager, and tests/test_mcp.py fails if that ever changes."""
    for tool in mcp._tool_manager.list_tools():
        meta = tool.fn_metadata
        allowed = set(meta.arg_model.model_fields)
        validate = meta.validate_arguments

        def checked(arguments, _validate=validate, _allowed=allowed, _name=tool.name):
            from pydantic_core import PydanticCustomError, ValidationError
            unknown = sorted(set(arguments or {}) - _allowed)
            if unknown:  # raised as the SDK's own argument error (a ValidationError), so it reaches the client
                why = PydanticCustomError("unknown_argument", "not an argument of this tool; its arguments are: "
                                          "{allowed}", {"allowed": ", ".join(sorted(_allowed)) or "none"})
                raise ValidationError.from_exception_data(
                    _name, [{"type": why, "loc": (k,), "input": "(not shown)"} for k in unknown])
            try:
                return _validate(arguments)
            except ValidationError as exc:  # pydantic's own text has a docs URL and no hint: say what to send
                raise _plain_argument_errors(_name, exc, arguments or {}) from None
        object.__setattr__(meta, "validate_arguments", checked)  # a pydantic model: bypass its setattr


def _plain_argument_errors(tool: str, exc, arguments: dict):
    """pydantic's argument errors again as a ValidationError (the one type the SDK shows the client), each saying
    which argument, what was wrong and what to send, without pydantic's docs URL."""
    from pydantic_core import PydanticCustomError, ValidationError
    items = []
    for e in exc.errors(include_url=False):
        got = arguments.get(e["loc"][0]) if e["loc"] else None
        msg = f"{e['msg'].lower()} (got {type(got).__name__})"
        if e["loc"] and e["loc"][0] == "config" and isinstance(got, str):
            msg += ("; pass the config as an object, or its YAML text as `yaml` (a file path is not read: read the "
                    "file and pass its text)")
        items.append({"type": PydanticCustomError("bad_argument", "{why}", {"why": msg}), "loc": e["loc"],
                      "input": "(not shown)"})
    return ValidationError.from_exception_data(tool, items)


def _one_config(config: dict | None, yaml_text: str | None) -> dict:
    if (config is None) == (yaml_text is None):
        raise PrefpilotError("pass exactly one of `config` (an object) or `yaml` (YAML text)", code="bad_arguments")
    if yaml_text is not None:
        from .config.load import parse_config_text
        try:
            return parse_config_text(yaml_text, "yaml argument")
        except PrefpilotError as exc:
            if exc.code == "not_a_mapping" and "\n" not in yaml_text.strip():  # "run.yaml": a path, not its text
                raise PrefpilotError(f"yaml argument {yaml_text.strip()[:80]!r} is one line, not a config: `yaml` takes "
                                     "the config's text (key: value lines), not a file path; read the file and pass "
                                     "its text", code="not_a_mapping") from None
            raise
    if not isinstance(config, dict):
        raise PrefpilotError("config must be an object of TRL/prefpilot keys", code="not_a_mapping")
    return config


def _json_safe(obj):
    return json.loads(json.dumps(obj, default=str))


# ----------------------------------------------------------------------------- the server
INVALID_PARAMS = -32602  # JSON-RPC's code for bad method parameters


class _Server(MCPServer):
    """The SDK's server, with prompt requests checked first: an unknown prompt or a missing/unknown argument
    gets a JSON-RPC invalid-params error naming what to send, not "Internal server error" and a traceback."""

    async def get_prompt(self, name, arguments=None, context=None):
        from mcp.shared.exceptions import MCPError
        prompt = self._prompt_manager.get_prompt(name)
        if prompt is None:
            known = ", ".join(p.name for p in self._prompt_manager.list_prompts())
            raise MCPError(INVALID_PARAMS, f"unknown prompt {name!r}; prompts: {known}")
        spec = {a.name: a for a in prompt.arguments or []}
        given = dict(arguments or {})
        missing = [a for a, arg in spec.items() if arg.required and a not in given]
        unknown = sorted(set(given) - set(spec))
        if missing or unknown:
            parts = ([f"missing required argument(s): {', '.join(missing)}"] if missing else []) + \
                    ([f"unknown argument(s): {', '.join(unknown)}"] if unknown else [])
            raise MCPError(INVALID_PARAMS, f"prompt {name!r}: {'; '.join(parts)} (it takes: "
                           f"{', '.join(f'{a} (required)' if arg.required else a for a, arg in spec.items())})")
        return await super().get_prompt(name, given, context)


INSTRUCTIONS = """prefpilot plans, validates, runs and diagnoses DPO and SimPO preference optimisation (TRL).
Typical loop: plan_run -> validate_config -> launch_run -> run_status (poll) -> diagnose_run.
explain_loss and read_skill explain loss types and hyperparameters; every value has a source.
Paths must lie inside the server's workspace; runs live under its runs root."""


def build_server(ws: Workspace) -> MCPServer:
    from . import __version__
    mcp = _Server(name="prefpilot", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING")

    # -- skills
    @mcp.tool(title="List the skills", annotations=READ_ONLY)
    @tool_errors
    def list_skills() -> list[SkillInfo]:
        """List the bundled skills (DPO/TRL training, SimPO, reward-margin diagnostics) with their files.

        Read one with read_skill(name, file) or the resource skill://{name}/{file}."""
        from .skills import list_skills as _list
        return _list()

    @mcp.tool(title="Read a skill file", annotations=READ_ONLY)
    @tool_errors
    def read_skill(name: str, file: str = "SKILL.md") -> str:
        """Return the Markdown of one skill file, e.g. name="simpo", file="references/debugging.md".

        Only files listed by list_skills can be read."""
        from .skills import read_skill as _read
        return _read(name, file)

    # -- config
    @mcp.tool(title="Validate a run config", annotations=READ_ONLY)
    @tool_errors
    def validate_config(config: dict[str, Any] | None = None, yaml: str | None = None) -> ValidationReport:
        """Check a run config before spending compute: unknown/removed keys, types, ranges, TRL's own refusals,
        and a memory estimate for the hardware. Pass the config as an object or as YAML text (a TRL CLI
        config works unchanged; add `method: simpo`, `orpo`, `kto` or `cpo` for those trainers). Returns valid, errors and warnings
        (each with path, code, message, suggestion), the normalised config and the estimate."""
        from .config.validate import validate
        return _json_safe(validate(ws.confine_config(_one_config(config, yaml))))

    @mcp.tool(title="Plan a run from published hyperparameters", annotations=READ_ONLY)
    @tool_errors
    def plan_run(method: Literal["dpo", "simpo", "orpo", "kto"] = "dpo", model: str = DEFAULT_MODEL,
                 # the bounds plan() checks (config/limits.py), declared so the tool's schema shows them
                 gpu_memory_gb: Annotated[float | None, Field(gt=0, le=limits.MAX_GPU_MEMORY_GB, allow_inf_nan=False,
                                                              description="GB per GPU; omit for this machine")] = None,
                 num_gpus: Annotated[int | None, Field(ge=0, le=limits.MAX_GPUS)] = None,
                 dataset_size: Annotated[int | None, Field(ge=1, le=limits.MAX_PAIRS)] = None,
                 dataset_path: str = "builtin:arith-prefs",
                 max_length: Annotated[int, Field(ge=8, le=limits.MAX_TOKENS)] = 1024) -> PlanResult:
        """Plan a complete run config from the published hyperparameter tables for this model and hardware
        (default: this machine). Returns the config (ready for launch_run), the rationale for every choice,
        memory savers applied and the memory estimate. gpu_memory_gb is per GPU."""
        from .plan import hub_dataset_id, plan
        if dataset_path and not dataset_path.startswith("builtin:") and not hub_dataset_id(dataset_path, ws.root):
            dataset_path = str(ws.confine(dataset_path, "dataset_path"))
        model = ws.confine_model(model)  # a local model folder is read for its size: only inside the workspace
        return _json_safe(plan(method=method, model=model, gpu_memory_gb=gpu_memory_gb, num_gpus=num_gpus,
                               dataset_size=dataset_size, dataset_path=dataset_path, max_length=max_length))

    # -- runs
    # open world: a model or dataset not on disk is downloaded from the Hub by the trainer
    @mcp.tool(title="Launch a training run", annotations=ToolAnnotations(
        read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True))
    @tool_errors
    def launch_run(config: dict[str, Any] | None = None, yaml: str | None = None, dry_run: bool = False) -> LaunchResult:
        """Validate a config and start training in the background; returns run_id at once.

        An invalid config is refused with the validator's errors. dry_run=true only validates.
        Where it trains: the config's launch block, e.g. launch: {backend: slurm, nodes: 2, gpus_per_node: 8,
        partition: gpu} submits a Slurm batch job (one accelerate launch per node, ranks from Slurm); without
        it, a process on this machine. Follow with run_status(run_id) (for Slurm: pending with its reason,
        running on which nodes); the run keeps going if this server restarts."""
        from . import runs
        from .config.validate import validate
        cfg = ws.confine_config(_one_config(config, yaml))
        report = _json_safe(validate(cfg))
        if not report["valid"]:
            lines = "; ".join(f"{e['path'] or '/'} [{e['code']}]: {e['message']}"
                              + (f" ({e['suggestion']})" if e.get("suggestion") else "") for e in report["errors"])
            raise ToolError(f"invalid config, nothing was started: {lines}")
        if dry_run:
            return {"run_id": None, "run_dir": None, "state": "not started", "dry_run": True, "report": report,
                    "next": "call launch_run again without dry_run to start it"}
        if ws.max_wall_time:  # the operator's lease is a ceiling: a config may ask for less, never more
            asked = cfg.get("max_wall_time")
            cfg["max_wall_time"] = min(asked, ws.max_wall_time) if isinstance(asked, (int, float)) else ws.max_wall_time
        # relative paths are the workspace's, and the count of active runs and the start are one locked step
        run_id = runs.launch(cfg, ws.runs_root, base=ws.root, max_active=ws.max_concurrent_runs)
        st = runs.status(run_id, ws.runs_root)
        return {"run_id": run_id, "run_dir": st["run_dir"], "state": st["state"], "dry_run": False,
                "report": report, "next": f"wait_run('{run_id}') or run_status('{run_id}'); diagnose_run('{run_id}') "
                                          "when done"}

    @mcp.tool(title="Status of a run", annotations=OBSERVE)
    @tool_errors
    def run_status(run_id: str) -> RunStatus:
        """State (queued/running/completed/failed/cancelled), step/total, percent, ETA, last logged metrics,
        live diagnosis findings and error of a run. A process that died without a final state is reported
        failed with its log tail."""
        from . import runs
        return _json_safe(runs.status(run_id, ws.runs_root))

    @mcp.tool(title="List runs", annotations=OBSERVE)
    @tool_errors
    def list_runs(limit: Annotated[int, Field(ge=1, le=200, description="runs per page")] = 20,
                  cursor: Annotated[str | None, Field(description="next_cursor of the previous page")] = None
                  ) -> RunPage:
        """Runs under the runs root, newest first, a page at a time (limit 1-200; pass next_cursor back for the
        next page)."""
        from . import runs
        rows = runs.list_runs(ws.runs_root)
        start = 0
        if cursor:
            ids = [r["run_id"] for r in rows]
            if cursor not in ids:
                raise PrefpilotError(f"cursor {cursor[:80]!r} is not a run id of this list", code="bad_cursor")
            start = ids.index(cursor) + 1
        page = rows[start:start + limit]
        more = start + limit < len(rows)
        return _json_safe({"runs": page, "next_cursor": page[-1]["run_id"] if more and page else None,
                           "total": len(rows)})

    @mcp.tool(title="Cancel a run", annotations=ToolAnnotations(
        read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False))
    @tool_errors
    def cancel_run(run_id: str, grace_seconds: Annotated[float, Field(ge=0, le=600, description=(
            "seconds the trainer gets to save a checkpoint before it is killed"))] = 60.0) -> RunStatus:
        """Ask a running run to stop: it saves a checkpoint after the current step and ends as cancelled (killed
        after grace_seconds if it does not stop). Returns at once with state 'cancelling'; follow with wait_run
        or run_status. A second cancel is a no-op. Resume later with resume_run."""
        from . import runs
        return _json_safe(runs.cancel(run_id, ws.runs_root, grace=grace_seconds, wait=False))

    @mcp.tool(title="Resume a run", annotations=ToolAnnotations(
        read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True))
    @tool_errors
    def resume_run(run_id: str) -> RunStatus:
        """Restart a failed or cancelled run from its last complete checkpoint (from the start if none)."""
        from . import runs
        return _json_safe(runs.resume(run_id, ws.runs_root, max_active=ws.max_concurrent_runs,
                                      lease_ceiling=ws.max_wall_time))

    @mcp.tool(title="Wait for a run", annotations=OBSERVE)
    @tool_errors_async
    async def wait_run(run_id: str, ctx: Context,
                       timeout_s: Annotated[float, Field(ge=1, le=50, description=(
                           "longest wait in seconds (below the usual 60 s client timeout)"))] = 30.0,
                       until: Annotated[Literal["end", "step"], Field(description=(
                           "end: until the run stops (completed, failed, cancelled); step: until the next "
                           "logged step"))] = "end") -> RunStatus:
        """Block up to timeout_s while a run trains, sending progress notifications (step of total, loss,
        ETA) when the client asked for them, then return its status. Call again to keep waiting."""
        import anyio

        from . import runs
        deadline = anyio.current_time() + timeout_s
        st = runs.status(run_id, ws.runs_root)
        first_step = st.get("step")
        while True:
            step, total = st.get("step") or 0, st.get("total_steps")
            m = st.get("last_metrics") or {}
            bits = [f"{st.get('state')}", f"step {step}/{total or '?'}"]
            if isinstance(m.get("loss"), (int, float)):
                bits.append(f"loss {m['loss']:.4g}")
            if st.get("eta_seconds") and st.get("state") == "running":
                bits.append(f"ETA {int(st['eta_seconds'])} s")
            await ctx.report_progress(step, total, ", ".join(bits))
            done = st.get("state") not in runs.ACTIVE or (until == "step" and st.get("step") != first_step)
            if done or anyio.current_time() >= deadline:
                return _json_safe({**st, "note": "finished waiting" if done else
                                   f"still {st.get('state')} after {timeout_s:g} s: call wait_run again"})
            await anyio.sleep(min(1.0, max(0.0, deadline - anyio.current_time())))
            st = runs.status(run_id, ws.runs_root)

    @mcp.tool(title="Tail a run's log", annotations=READ_ONLY)
    @tool_errors
    def run_logs(run_id: str, tail: int = 50) -> str:
        """The last `tail` lines (1-10000) of a run's train.log."""
        from . import runs
        return runs.logs(run_id, ws.runs_root, tail=tail)

    # -- evaluation
    @mcp.tool(title="Evaluate a run's model", annotations=ToolAnnotations(
        read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False))
    @tool_errors_async
    async def evaluate_run(run_id: str, ctx: Context,
                           pairs: Annotated[str | None, Field(description=(
                               "held-out pairs: a file in the workspace or builtin:<name>; default the run's test "
                               "split, else the slice it set aside at launch"))] = None,
                           prompts: Annotated[int, Field(ge=0, le=1024, description=(
                               "held-out prompts to generate from (trained model and reference)"))] = 8,
                           checkpoints: Literal["last", "all"] = "last",
                           max_new_tokens: Annotated[int, Field(ge=1, le=4096)] = 48,
                           engine: Annotated[Literal["auto", "transformers", "vllm"], Field(description=(
                               "who generates: vLLM when installed with a GPU (auto), or transformers"))] = "auto",
                           timeout_s: Annotated[float, Field(ge=1, le=50, description=(
                               "longest wait in seconds; call again to keep waiting"))] = 30.0) -> Evaluation:
        """Judge a run's trained model, not its curves: held-out preference accuracy against the reference
        (summed, per-token and, for DPO, implicit reward), greedy generations beside the reference (length ratio,
        share that never emits EOS, repetition loops, empty answers, per-token KL) and, with checkpoints='all',
        the best checkpoint. Runs in the background with progress notifications; returns the report when done,
        else state 'running' (call again with the same arguments to keep waiting)."""
        import anyio

        from . import runs
        from .evaluation import background
        d = runs.run_path(run_id, ws.runs_root)
        if pairs is not None and not pairs.startswith("builtin:"):
            pairs = str(ws.confine(pairs, "pairs"))
        options = {"pairs": pairs, "prompts": prompts, "checkpoints": checkpoints, "max_new_tokens": max_new_tokens,
                   "engine": engine}
        done = await anyio.to_thread.run_sync(background.report_if_current, d, options)
        if done is not None:
            return _json_safe({**done, "state": "completed", "note": "the evaluation of the current model"})
        st = await anyio.to_thread.run_sync(background.read, d)
        if st.get("state") != "running":
            st = await anyio.to_thread.run_sync(background.start, d, options)
        deadline = anyio.current_time() + timeout_s
        while True:
            await ctx.report_progress(st.get("done") or 0, st.get("total"), f"evaluating: {st.get('phase')}")
            if st.get("state") == "completed":
                from .evaluation.run import read_report
                return _json_safe({**(read_report(d) or {}), "state": "completed"})
            if st.get("state") == "failed":
                raise PrefpilotError(f"the evaluation of {run_id} failed: {st.get('error')}", code="eval_failed")
            if anyio.current_time() >= deadline:
                return {"state": "running", "run_id": run_id,
                        "progress": {k: st.get(k) for k in ("done", "total", "phase")},
                        "note": f"still evaluating after {timeout_s:g} s: call evaluate_run again with the same "
                                "arguments to keep waiting"}
            await anyio.sleep(min(1.0, max(0.0, deadline - anyio.current_time())))
            st = await anyio.to_thread.run_sync(background.read, d)

    # -- diagnosis
    @mcp.tool(title="Diagnose a run", annotations=READ_ONLY)
    @tool_errors
    def diagnose_run(run_id: str | None = None, metrics_path: str | None = None,
                     method: Literal["dpo", "simpo", "cpo", "orpo", "kto"] | None = None, plot: bool = False
                     ) -> Annotated[CallToolResult, Diagnosis]:
        """Diagnose a preference run (run_id) or a log file inside the workspace (metrics.jsonl,
        trainer_state.json, trainer_log.jsonl, CSV/TSV, a console log, a saved notebook (.ipynb), a model card
        or README with several tables, TensorBoard events; parsed.block says which part of the file was read).
        One-row signatures (NaN anywhere, zero gradient, zero rewards, empty completions, reference
        mismatch, instant saturation, learning rate out of range) work on a few pasted lines; trend rules
        (no learning, chance accuracy, negative margins, degeneration, margin explosion, likelihood
        displacement, eval divergence, gradient spikes) need a run of points. verdict is healthy, problems
        or inconclusive (too few points: the report says what to log). The method (dpo/simpo/cpo/orpo/kto)
        comes from the run's config, else the evidence in the file (logged keys, a notebook's trainer, the
        reward scale); "unknown" when nothing says, and then only method-independent rules run (pass
        method to run the rest). Each finding has
        evidence, an explanation and remedies as config changes that say what they change from. With
        plot=true the curves also come back as a PNG image (~130 KB; off by default)."""
        from . import runs
        from .diagnosis import diagnose_source
        if (run_id is None) == (metrics_path is None):
            raise PrefpilotError("pass exactly one of run_id or metrics_path", code="bad_arguments")
        path = runs.run_path(run_id, ws.runs_root) if run_id else ws.confine(metrics_path, "metrics_path")
        if not path.exists():
            raise PrefpilotError(f"metrics_path {metrics_path!r}: no such file or directory", code="not_found")
        png = io.BytesIO() if plot else None
        report = _json_safe(diagnose_source(str(path), is_path=True, method=method, plot=png, roots=ws.roots))
        content = [TextContent(type="text", text=json.dumps(report, indent=1))]
        if png is not None:
            content.append(ImageContent(type="image", mime_type="image/png",
                                        data=base64.b64encode(png.getvalue()).decode()))
        return CallToolResult(content=content, structured_content=report)

    # -- data
    @mcp.tool(title="Check a preference dataset", annotations=READ_ONLY)
    @tool_errors_async
    async def check_dataset(data: Annotated[str, Field(description=(
                                "a .jsonl/.json/.csv/.parquet file in the workspace, builtin:<name>, or a hub id "
                                "in the local datasets cache"))],
                            config: dict[str, Any] | None = None, yaml: str | None = None,
                            model: str | None = None,
                            max_length: Annotated[int | None, Field(ge=8, le=limits.MAX_TOKENS)] = None,
                            score: bool = False,
                            mapping: Annotated[dict[str, str] | None, Field(description=(
                                "TRL column -> this file's column, e.g. {\"prompt\": \"question\"}"))] = None,
                            max_rows: Annotated[int, Field(ge=1, le=100_000, description=(
                                "rows tokenized and scored at most (the row checks read every row)"))] = 1000
                            ) -> DataReport:
        """Judge preference data before training: its layout (standard, conversational, implicit_prompt,
        unpaired, or a foreign one: sharegpt, ultrafeedback, hh_rlhf, alpaca, kto_messages, which
        convert_dataset maps to TRL's), and findings with row numbers and a remedy: missing_columns (with the
        mapping that fixes it), empty_completion, identical_pair, duplicate_pairs, length_bias, few_pairs (with a
        config's batch plan). With a model (or the config's): truncated, prompt_fills_max_length,
        no_chat_template, tokenized as TRL will. score=true also scores every pair with the reference model
        (already_preferred: pairs it ranks right already predict saturation) and caches the log-probs that a
        run with precompute_ref_log_probs reuses; scoring takes about a second per few pairs on a CPU."""
        import anyio

        from .datacheck import check_data
        cfg = ws.confine_config(_one_config(config, yaml)) if (config is not None or yaml is not None) else None
        if not data.startswith("builtin:"):
            from .plan import hub_dataset_id
            if not hub_dataset_id(data, ws.root):
                data = str(ws.confine(data, "data"))
        if model is not None:
            model = ws.confine_model(model)
        return _json_safe(await anyio.to_thread.run_sync(lambda: check_data(
            data, config=cfg, model=model, max_length=max_length, score=score, mapping=mapping, max_rows=max_rows,
            root=ws.root, out_dir=ws.root / "data-check" if score else None)))

    @mcp.tool(title="Convert a dataset to TRL's layout", annotations=ToolAnnotations(
        read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False))
    @tool_errors
    def convert_dataset(data: str, out: str, mapping: dict[str, str] | None = None,
                        overwrite: bool = False) -> ConvertResult:
        """Write TRL-ready JSONL (out, inside the workspace) from a ShareGPT/LLaMA-Factory, UltraFeedback,
        HH-RLHF, alpaca or KTO-messages file, or any columns renamed by mapping; row order kept, rows that do
        not convert are listed. Says what was mapped. Refuses to overwrite unless overwrite=true."""
        from .datacheck import convert_data
        if not data.startswith("builtin:"):
            data = str(ws.confine(data, "data"))
        return _json_safe(convert_data(data, str(ws.confine(out, "out")), mapping=mapping, overwrite=overwrite))

    @mcp.tool(title="Explain a loss type", annotations=READ_ONLY)
    @tool_errors
    def explain_loss(loss_type: str, method: Literal["dpo", "simpo", "orpo", "kto"] | None = None) -> LossExplanation:
        """Explain a loss type: formula (a Python expression per pair, tested against TRL), when to use it,
        config examples and starting hyperparameters with their sources. DPO types are TRL's DPOTrainer
        loss_type values (sigmoid, ipo, hinge, robust, apo_zero, ...); SimPO has sigmoid and hinge; ORPO has
        one loss (loss_type orpo); KTO has kto and apo_zero_unpaired (per row, desirable and undesirable)."""
        from .explain import explain_loss as _explain
        return _explain(loss_type, method)

    _refuse_unknown_arguments(mcp)

    # -- resources: every bundled skill file, plus a template for any of them
    from .skills import list_skills as _list_skills, read_skill as _read_skill
    def file_reader(name: str, file: str):
        def read() -> str:
            return _read_skill(name, file)
        return read

    for skill in _list_skills():
        for f in skill["files"]:
            mcp.resource(f"skill://{skill['name']}/{f}", name=f"{skill['name']}/{f}",
                         mime_type="text/markdown" if f.endswith(".md") else "text/plain",
                         description=skill["description"][:200] if f == "SKILL.md" else None)(file_reader(skill["name"], f))

    @mcp.resource("skill://{name}/{+path}", mime_type="text/markdown")
    def skill_file(name: str, path: str) -> str:
        """Any file of a bundled skill, e.g. skill://simpo/references/debugging.md."""
        try:
            return _read_skill(name, path)
        except PrefpilotError as exc:  # a client mistake: a clear "not found", no traceback on stderr
            raise ResourceNotFoundError(str(exc)) from None

    # -- prompt
    @mcp.prompt(name="plan-preference-run")
    def plan_preference_run(goal: str, model: str = DEFAULT_MODEL, method: str = "dpo") -> str:
        """Walk through plan -> validate -> launch -> watch -> diagnose for a preference-optimisation run."""
        return f"""You are setting up a {method.upper()} preference-optimisation run with prefpilot.
Goal: {goal}
Model: {model}

1. Call explain_loss("{'simpo' if method == 'simpo' else 'sigmoid'}", method="{method}") if the user needs the loss explained;
   read_skill("preference-diagnostics") tells you what healthy curves look like.
2. Call plan_run(method="{method}", model="{model}", dataset_path=..., dataset_size=...) with the user's
   hardware (gpu_memory_gb per GPU, num_gpus). Show the rationale; change only what the user asks.
3. Call validate_config(config=<the planned or edited config>). Fix every error (each has a suggestion)
   and explain any warning to the user before going on.
4. Call launch_run(config=...) and note the run_id. Poll run_status(run_id) every minute or so; report
   step/total, ETA and the last loss and rewards/margins. Use run_logs(run_id) if it fails.
5. When it completes (or looks wrong mid-run), call diagnose_run(run_id). Report each finding with its
   evidence; propose its remedies as config changes, validate the changed config, and relaunch only
   if the user agrees. cancel_run(run_id) stops a run and keeps its checkpoint."""

    return mcp


def serve(transport: str = "stdio", host: str = "127.0.0.1", port: int = 8765, workspace=None, runs_root=None,
          allow_remote_code: bool = False, allow_network: bool = False, token_file: str | None = None,
          no_auth: bool = False, allowed_hosts=(), allowed_origins=(), max_concurrent_runs: int | None = None,
          max_wall_time: float | None = None) -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,  # stdout is the protocol channel on stdio
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ws = Workspace.create(workspace, runs_root, allow_remote_code, allow_network=allow_network,
                          max_concurrent_runs=max_concurrent_runs, max_wall_time=max_wall_time)
    server = build_server(ws)
    if token_file:
        token_file = str(Path(token_file).expanduser().absolute())  # given relative to where the server started
    if ws.root.is_dir():
        os.chdir(ws.root)  # a relative path anything resolves (TRL, datasets, validation) lands in the workspace
    if transport == "stdio":
        server.run("stdio")
        return 0
    from .mcp_http import serve_http  # bearer token, Host/Origin allow-lists (see mcp_http.py)
    return serve_http(server, ws.root, host, port, token_file=token_file, no_auth=no_auth,
                      allowed_hosts=allowed_hosts, allowed_origins=allowed_origins)
