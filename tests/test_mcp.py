"""The MCP server as an agent meets it: the real server process over stdio, the SDK's real client."""
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
import yaml
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from tiny_model import build_tiny_model

ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def params(ws, *extra):
    return StdioServerParameters(command=sys.executable,
                                 args=["-m", "prefpilot.cli", "mcp", "--workspace", str(ws), *extra],
                                 env={**ENV, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}, cwd=str(ws))


@contextmanager
def session(ws, *extra):
    """A live client session usable from sync code (and from hypothesis tests) through a blocking portal."""
    with start_blocking_portal() as portal:
        # the portal enters and exits the client in one task, as anyio's cancel scopes require
        with portal.wrap_async_context_manager(Client(params(ws, *extra), read_timeout_seconds=120)) as client:
            yield portal, client


def text(result) -> str:
    return "\n".join(c.text for c in result.content if c.type == "text")


def call(portal, client, name, args=None):
    return portal.call(client.call_tool, name, args or {})


@pytest.fixture
def ws(tmp_path):
    (tmp_path / "data").mkdir()
    shutil.copy(os.path.join(os.path.dirname(__file__), "..", "backend/prefpilot/data/arith-prefs.test.jsonl"),
                tmp_path / "data/prefs.jsonl")
    return tmp_path


def test_diagnose_run_reads_a_real_notebook_and_card_in_the_workspace(ws):
    """What an agent passes: the user's saved notebook or model card, not a table copied out by hand."""
    logs = os.path.join(os.path.dirname(__file__), "real_logs")
    for name in ("nb-unslothai-zephyr-dpo.ipynb", "card-huggingfaceh4-starchat2-15b.md"):
        shutil.copy(os.path.join(logs, name), ws / name)
    with session(ws) as (portal, client):
        r = call(portal, client, "diagnose_run", {"metrics_path": "nb-unslothai-zephyr-dpo.ipynb"})
        assert not r.is_error, text(r)
        report = r.structured_content
        assert report["verdict"] == "healthy" and report["method"] == "dpo"
        assert report["parsed"]["block"].startswith("notebook HTML table (114 rows)")
        r = call(portal, client, "diagnose_run", {"metrics_path": "card-huggingfaceh4-starchat2-15b.md"})
        assert not r.is_error and "Training results" in r.structured_content["parsed"]["block"], text(r)
        assert r.structured_content["parsed"]["skipped_blocks"]  # the benchmark tables above it


def test_tools_resources_prompts_are_listed_with_schemas_and_annotations(ws):
    with session(ws) as (portal, client):
        tools = {t.name: t for t in portal.call(client.list_tools).tools}
        assert set(tools) == {"list_skills", "read_skill", "validate_config", "plan_run", "launch_run", "run_status",
                              "list_runs", "cancel_run", "resume_run", "wait_run", "run_logs", "diagnose_run", "evaluate_run",
                              "explain_loss", "check_dataset", "convert_dataset"}
        for name, t in tools.items():
            assert t.description and len(t.description) > 40, name
            assert t.output_schema, f"{name} has no output schema"
        assert tools["cancel_run"].annotations.destructive_hint is True
        assert tools["launch_run"].annotations.read_only_hint is False
        assert all(tools[n].annotations.read_only_hint for n in ("validate_config", "diagnose_run"))
        # run_status/list_runs record a dead trainer as failed: they write, so they are not read-only
        assert not tools["run_status"].annotations.read_only_hint and tools["launch_run"].annotations.open_world_hint
        assert all(t.title for t in tools.values())
        assert tools["wait_run"].input_schema["properties"]["timeout_s"]["maximum"] == 50
        assert "config" in tools["validate_config"].input_schema["properties"]

        resources = [str(r.uri) for r in portal.call(client.list_resources).resources]
        assert "skill://simpo/SKILL.md" in resources and "skill://simpo/references/debugging.md" in resources
        templates = [t.uri_template for t in portal.call(client.list_resource_templates).resource_templates]
        assert templates == ["skill://{name}/{+path}"]
        body = portal.call(client.read_resource, "skill://preference-diagnostics/references/pathologies.md")
        assert "## likelihood_displacement" in body.contents[0].text

        prompts = portal.call(client.list_prompts).prompts
        assert [p.name for p in prompts] == ["plan-preference-run"]
        got = portal.call(client.get_prompt, "plan-preference-run", {"goal": "make answers concise"})
        msg = got.messages[0].content.text
        assert all(step in msg for step in ("plan_run", "validate_config", "launch_run", "diagnose_run"))

        skills = call(portal, client, "list_skills").structured_content["result"]
        assert {s["name"] for s in skills} == {"trl-fine-tuning", "simpo", "preference-diagnostics"}
        assert "SimPO" in text(call(portal, client, "read_skill", {"name": "simpo"}))


def test_validate_plan_explain_and_refusals(ws, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    (ws / "escape").symlink_to(outside)
    good = {"model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "dataset_path": "data/prefs.jsonl",
            "beta": 0.1, "learning_rate": 5e-7}
    with session(ws) as (portal, client):
        r = call(portal, client, "validate_config", {"config": good})
        assert not r.is_error and r.structured_content["valid"] is True
        assert r.structured_content["normalized"]["dataset_path"] == str(ws / "data/prefs.jsonl")
        r = call(portal, client, "validate_config", {"yaml": "model_name_or_path: m\ndataset_path: builtin:arith-prefs\n"
                                                             "beta: -1\nmax_prompt_length: 128\n"})
        report = r.structured_content
        assert report["valid"] is False and {"/beta", "/max_prompt_length"} <= {e["path"] for e in report["errors"]}
        r = call(portal, client, "validate_config", {"yaml": "a: [unclosed"})
        assert r.is_error and "yaml" in text(r).lower()

        p = call(portal, client, "plan_run", {"method": "simpo", "gpu_memory_gb": 80, "num_gpus": 8,
                                              "model": "meta-llama/Meta-Llama-3-8B-Instruct"})
        assert not p.is_error and p.structured_content["config"]["method"] == "simpo"
        assert p.structured_content["rationale"]
        p = call(portal, client, "plan_run", {"dataset_path": "HuggingFaceH4/ultrafeedback_binarized"})
        assert not p.is_error, text(p)  # a hub id is no workspace path: it becomes TRL's dataset_name
        assert p.structured_content["config"]["dataset_name"] == "HuggingFaceH4/ultrafeedback_binarized"
        e = call(portal, client, "explain_loss", {"loss_type": "ipo"}).structured_content
        assert e["formula"].startswith("(") and e["starting_hyperparameters"][0]["source"]
        assert call(portal, client, "explain_loss", {"loss_type": "nope"}).is_error

        # path escapes: .., absolute elsewhere, a symlink out of the workspace
        for bad in ("../x.jsonl", str(outside / "secret.jsonl"), "escape/secret.jsonl", "data/../../x.jsonl"):
            r = call(portal, client, "validate_config", {"config": {**good, "dataset_path": bad}})
            assert r.is_error and "outside the workspace" in text(r), bad
            r = call(portal, client, "launch_run", {"config": {**good, "dataset_path": bad}})
            assert r.is_error and "outside the workspace" in text(r)
        r = call(portal, client, "diagnose_run", {"metrics_path": str(outside / "secret.jsonl")})
        assert r.is_error and "outside the workspace" in text(r)
        r = call(portal, client, "validate_config", {"config": {**good, "output_dir": "/tmp/elsewhere"}})
        assert r.is_error and "output_dir" in text(r)
        r = call(portal, client, "launch_run", {"config": {**good, "trust_remote_code": True}})
        assert r.is_error and "--allow-remote-code" in text(r)
        r = call(portal, client, "read_skill", {"name": "simpo", "file": "../../../etc/passwd"})
        assert r.is_error and "no file" in text(r)
        for bad_id in ("../../etc", "x/../../y"):
            r = call(portal, client, "run_status", {"run_id": bad_id})
            assert r.is_error and "not valid" in text(r) and "Traceback" not in text(r)
        r = call(portal, client, "launch_run", {"config": {**good, "beta": -2}})
        assert r.is_error and "nothing was started" in text(r) and "/beta" in text(r)
        assert not (ws / "runs").exists() or not list((ws / "runs").iterdir())
    with session(ws, "--allow-remote-code") as (portal, client):
        r = call(portal, client, "validate_config", {"config": {**good, "trust_remote_code": True}})
        assert not r.is_error


@pytest.mark.slow
def test_launch_wait_diagnose_cancel_resume_over_stdio(ws):
    tiny = build_tiny_model(ws / "model")
    cfg = {"model_name_or_path": "model", "dataset_path": "builtin:arith-prefs", "per_device_train_batch_size": 2,
           "learning_rate": 5e-3, "max_length": 64, "save_strategy": "no", "max_steps": 24}
    assert tiny.exists()
    with session(ws) as (portal, client):
        dry = call(portal, client, "launch_run", {"config": cfg, "dry_run": True}).structured_content
        assert dry["dry_run"] and dry["run_id"] is None and dry["report"]["valid"]
        run = call(portal, client, "launch_run", {"yaml": yaml.safe_dump(cfg)}).structured_content
        run_id = run["run_id"]
        assert run["run_dir"].startswith(str(ws / "runs"))
        # one training at a time on this CPU machine: a second launch is refused, naming the active one
        busy = call(portal, client, "launch_run", {"config": cfg})
        assert busy.is_error and "too_many_runs" in text(busy) and run_id in text(busy)
        progress = []

        async def on_progress(value, total, message):
            progress.append((value, total, message))
        deadline = time.time() + 300
        while True:  # wait_run blocks up to timeout_s and reports progress (step of total, loss, ETA)
            st = portal.call(lambda: client.call_tool("wait_run", {"run_id": run_id, "timeout_s": 20},
                                                      progress_callback=on_progress)).structured_content
            if st["state"] not in ("queued", "running") or time.time() > deadline:
                break
        assert st["state"] == "completed", st.get("log_tail")
        assert st["step"] == 24 and st["last_metrics"]["step"] == 24
        assert len(progress) >= 2 and any("step" in m for _, _, m in progress)
        assert st["verdict"] in ("healthy", "problems", "inconclusive")  # the live diagnosis ran

        d = call(portal, client, "diagnose_run", {"run_id": run_id})
        assert not d.is_error and not [c for c in d.content if c.type == "image"]  # the PNG only on request
        assert d.structured_content["steps"] == 24 and d.structured_content["parsed"]["rows"] == 24
        d2 = call(portal, client, "diagnose_run", {"metrics_path": f"runs/{run_id}/metrics.jsonl", "plot": True})
        images = [c for c in d2.content if c.type == "image"]
        assert len(images) == 1 and base64.b64decode(images[0].data)[:4] == b"\x89PNG"

        long = call(portal, client, "launch_run", {"config": {**cfg, "max_steps": 5000}}).structured_content
        # cancel once it is inside the training loop (a cancel during model loading has no step to checkpoint)
        while not (st := call(portal, client, "run_status", {"run_id": long["run_id"]}).structured_content)[
                "last_metrics"]:
            time.sleep(0.3)
        os.kill(st["pid"], signal.SIGSTOP)  # a trainer that cannot answer: cancel must still return at once
        try:
            t0 = time.perf_counter()
            c = call(portal, client, "cancel_run", {"run_id": long["run_id"], "grace_seconds": 120}).structured_content
            assert time.perf_counter() - t0 < 1 and c["state"] == "cancelling"
            again = call(portal, client, "cancel_run", {"run_id": long["run_id"]}).structured_content
            assert "already requested" in again["note"]
        finally:
            os.kill(st["pid"], signal.SIGCONT)
        while (c := call(portal, client, "wait_run", {"run_id": long["run_id"], "timeout_s": 30}).structured_content
               )["state"] in ("queued", "running"):
            pass
        assert c["state"] == "cancelled" and c["checkpoint"]
        page = call(portal, client, "list_runs", {"limit": 1}).structured_content
        assert page["total"] == 2 and len(page["runs"]) == 1 and page["next_cursor"]
        rest = call(portal, client, "list_runs", {"limit": 1, "cursor": page["next_cursor"]}).structured_content
        assert {r["run_id"]: r["state"] for r in page["runs"] + rest["runs"]} == {
            run_id: "completed", long["run_id"]: "cancelled"} and rest["next_cursor"] is None
        logs = text(call(portal, client, "run_logs", {"run_id": long["run_id"], "tail": 20}))
        assert "stop requested" in logs
        resumed = call(portal, client, "resume_run", {"run_id": long["run_id"]}).structured_content
        assert resumed["state"] in ("queued", "running") and resumed["resumed_from"].endswith(c["checkpoint"][-20:])
        call(portal, client, "cancel_run", {"run_id": long["run_id"], "grace_seconds": 5})
        while call(portal, client, "wait_run", {"run_id": long["run_id"], "timeout_s": 30}).structured_content[
                "state"] in ("queued", "running"):
            pass


def test_unknown_arguments_are_refused_with_the_allowed_names(ws):
    with session(ws) as (portal, client):
        r = call(portal, client, "cancel_run", {"run_id": "x", "grace_second": 5})
        assert r.is_error and "grace_second" in text(r) and "grace_seconds" in text(r)
        assert not call(portal, client, "explain_loss", {"loss_type": "ipo"}).is_error


def test_a_missing_skill_resource_is_not_found_not_a_crash(ws):
    from mcp.shared.exceptions import MCPError
    with session(ws) as (portal, client):
        with pytest.raises(MCPError) as err:
            portal.call(client.read_resource, "skill://simpo/references/nope.md")
        assert err.value.error.code == -32602 and "nope.md" in err.value.error.message


# ----------------------------------------------------------------------------- fuzz
JSONISH = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False)
                       | st.text(max_size=30), lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c,
                                                                                                  max_size=4),
                       max_leaves=10)
PATHS = st.sampled_from(["../x", "/etc/passwd", "runs/../../y", "data/prefs.jsonl", "", "~/.ssh/id_rsa", "a\x00b",
                         "runs"]) | st.text(max_size=20)
CONFIG_KEYS = st.sampled_from(["model_name_or_path", "dataset_path", "beta", "learning_rate", "loss_type", "method",
                               "trust_remote_code", "output_dir", "max_steps", "simpo_gamma", "hardware"])
CONFIGS = st.dictionaries(CONFIG_KEYS | st.text(max_size=10), JSONISH | PATHS, max_size=6)
TOOL_ARGS = {
    "list_skills": st.fixed_dictionaries({}),
    "read_skill": st.fixed_dictionaries({"name": st.text(max_size=20) | st.sampled_from(["simpo"]), "file": PATHS}),
    "validate_config": st.fixed_dictionaries({}, optional={"config": CONFIGS | JSONISH, "yaml": st.text(max_size=80)}),
    "plan_run": st.fixed_dictionaries({}, optional={"method": st.sampled_from(["dpo", "simpo", "x"]),
                                                    "model": st.text(max_size=30), "gpu_memory_gb": JSONISH,
                                                    "num_gpus": JSONISH, "dataset_size": JSONISH,
                                                    "dataset_path": PATHS}),
    "launch_run": st.fixed_dictionaries({"dry_run": st.booleans()}, optional={"config": CONFIGS, "yaml": st.text(max_size=60)}),
    "run_status": st.fixed_dictionaries({"run_id": JSONISH | PATHS}),
    "list_runs": st.fixed_dictionaries({}, optional={"limit": JSONISH, "cursor": JSONISH | PATHS}),
    "resume_run": st.fixed_dictionaries({"run_id": JSONISH | PATHS}),
    "wait_run": st.fixed_dictionaries({"run_id": JSONISH | PATHS}, optional={"timeout_s": st.just(1)}),
    "cancel_run": st.fixed_dictionaries({"run_id": JSONISH | PATHS}, optional={"grace_seconds": JSONISH}),
    "run_logs": st.fixed_dictionaries({"run_id": JSONISH | PATHS}, optional={"tail": JSONISH}),
    "diagnose_run": st.fixed_dictionaries({}, optional={"run_id": JSONISH | PATHS, "metrics_path": PATHS,
                                                        "method": JSONISH, "plot": st.just(False)}),
    "evaluate_run": st.fixed_dictionaries({"run_id": JSONISH | PATHS}, optional={
        "pairs": JSONISH | PATHS, "prompts": JSONISH, "checkpoints": JSONISH, "timeout_s": st.just(1)}),
    "explain_loss": st.fixed_dictionaries({"loss_type": st.text(max_size=15) | st.sampled_from(["ipo", "simpo"])},
                                          optional={"method": JSONISH}),
    "check_dataset": st.fixed_dictionaries({"data": PATHS | st.sampled_from(["metrics.jsonl", "builtin:x"])},
                                           optional={"mapping": JSONISH, "max_rows": JSONISH,
                                                     "config": CONFIGS | JSONISH}),
    "convert_dataset": st.fixed_dictionaries({"data": PATHS | st.sampled_from(["metrics.jsonl"]), "out": PATHS},
                                             optional={"mapping": JSONISH, "overwrite": st.booleans()}),
}


@pytest.fixture(scope="module")
def fuzz_session(tmp_path_factory):
    ws = tmp_path_factory.mktemp("fuzz-ws")
    (ws / "runs").mkdir()
    (ws / "metrics.jsonl").write_text("not json\n{\"loss\": 0.69}\n")
    with session(ws) as s:
        yield s


@pytest.mark.parametrize("tool", sorted(TOOL_ARGS))
def test_fuzzed_arguments_get_a_result_or_a_tool_error(tool, fuzz_session):
    portal, client = fuzz_session

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(TOOL_ARGS[tool])
    def check(args):
        r = call(portal, client, tool, args)
        if r.is_error:
            msg = text(r)
            assert msg and "Traceback" not in msg and "File \"" not in msg
        else:
            assert r.content or r.structured_content is not None
    check()
    # the server is still alive and answering after the barrage
    assert len(portal.call(client.list_tools).tools) == 16
    assert not [p for p in (portal.call(client.call_tool, "list_runs", {}).structured_content["runs"])
                if p.get("state") == "running"]


def test_inspector_cli_when_npm_is_available(ws):
    npx = shutil.which("npx")
    if not os.environ.get("PREFPILOT_NETWORK_TESTS"):
        pytest.skip("the MCP Inspector check downloads @modelcontextprotocol/inspector from npm (~240 MB): "
                    "set PREFPILOT_NETWORK_TESTS=1 to run it")
    if npx is None:
        pytest.skip("npx not installed: the MCP Inspector check needs Node.js")
    cmd = [npx, "-y", "@modelcontextprotocol/inspector", "--cli", sys.executable, "-m", "prefpilot.cli", "mcp",
           "--workspace", str(ws), "--method", "tools/list"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, **ENV})
    if r.returncode != 0 and any(s in r.stderr for s in ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "npm ERR",
                                                          "npm error", "ETIMEDOUT")):
        pytest.skip(f"the inspector could not be fetched from npm: {r.stderr.strip().splitlines()[-1][:200]}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "validate_config" in r.stdout
    r = subprocess.run(cmd[:-1] + ["tools/call", "--tool-name", "explain_loss", "--tool-arg", "loss_type=ipo"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, **ENV})
    assert r.returncode == 0 and "formula" in r.stdout, r.stderr[-2000:]
    json.loads(r.stdout)


def test_bad_prompt_requests_and_a_path_for_a_config_get_plain_errors(ws):
    from mcp.shared.exceptions import MCPError
    (ws / "run.yaml").write_text("model_name_or_path: m\ndataset_path: builtin:arith-prefs\n")
    with session(ws) as (portal, client):
        for name, args, expect in (("plan-preference-run", {}, "missing required argument(s): goal"),
                                   ("plan-preference-run", {"goal": "x", "gaol": "y"}, "unknown argument(s): gaol"),
                                   ("nope", {}, "unknown prompt 'nope'; prompts: plan-preference-run")):
            with pytest.raises(MCPError) as err:
                portal.call(client.get_prompt, name, args)
            assert expect in err.value.message and "Internal server error" not in err.value.message
        ok = portal.call(client.get_prompt, "plan-preference-run", {"goal": "terse answers"})
        assert "terse answers" in ok.messages[0].content.text  # a good request still works
        r = call(portal, client, "validate_config", {"config": "run.yaml"})
        assert r.is_error and "pass the config as an object, or its YAML text as `yaml`" in text(r)
        assert "errors.pydantic.dev" not in text(r)
        r = call(portal, client, "launch_run", {"yaml": "run.yaml"})
        assert r.is_error and "not a file path" in text(r)
