"""Issue 22, the second red team's MCP and run-manager holes: each probe through the real server and the SDK's
real client (or the CLI in a subprocess), each failing on the build it was found on.

remote code and tokens in nested keys, paths relative to the server's cwd, diagnose_run following a linked
folder out of the workspace, the concurrency limit's check-then-launch race, a FIFO that hung diagnose, a
status.json that is not an object, the operator's lease as a ceiling, token files, #SBATCH quoting, export."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
import yaml
from anyio.from_thread import start_blocking_portal
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from prefpilot import rundir, runs
from prefpilot.errors import PrefpilotError
from test_mcp import ENV, call, session, text
from tiny_model import build_tiny_model

BASE = {"method": "dpo", "model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "dataset_path": "builtin:arith-prefs"}
CLI = [sys.executable, "-m", "prefpilot.cli"]


@pytest.fixture
def ws(tmp_path):
    w = tmp_path / "ws"
    w.mkdir()
    return w


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


# ------------------------------------------------------------------ 1. policy at every nesting level
@pytest.mark.parametrize("nested,named", [
    ({"model_init_kwargs": {"trust_remote_code": True}}, "model_init_kwargs.trust_remote_code"),
    ({"model_init_kwargs": {"token": "hf_NESTEDSECRET1"}}, "model_init_kwargs.token"),
    ({"model_init_kwargs": {"cache_dir": "../outside"}}, "model_init_kwargs.cache_dir"),
    ({"deepspeed": {"zero_optimization": {"offload_param": {"nvme_path": "/tmp"}}}},
     "deepspeed.zero_optimization.offload_param.nvme_path"),
])
def test_policy_applies_to_nested_keys_over_mcp(ws, nested, named):
    with session(ws) as (portal, client):
        for tool, args in (("validate_config", {"config": {**BASE, **nested}}),
                           ("launch_run", {"config": {**BASE, **nested}, "dry_run": True})):
            r = call(portal, client, tool, args)
            assert r.is_error and named in text(r), text(r)
            assert "hf_NESTEDSECRET1" not in text(r)  # a refused secret is never echoed back


def test_nested_remote_code_passes_with_the_server_flag(ws):
    with session(ws, "--allow-remote-code") as (portal, client):
        r = call(portal, client, "validate_config", {"config": {**BASE, "model_init_kwargs": {"trust_remote_code": True}}})
        assert not r.is_error
        warned = {w["path"] for w in r.structured_content["warnings"]}
        assert "/model_init_kwargs/trust_remote_code" in warned  # the CLI's user is told, as for the top level


@pytest.mark.slow
def test_a_nested_token_reaches_neither_config_yaml_nor_training_args(tiny, tmp_path, monkeypatch):
    """The CLI trusts its user, but a token in model_init_kwargs must not be written into the run folder: it
    goes to the trainer's environment (HF_TOKEN), which huggingface_hub reads for every download."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model_name_or_path": str(tiny), "dataset_path": "builtin:arith-prefs",
                                   "max_steps": 1, "per_device_train_batch_size": 2, "max_length": 64,
                                   "save_strategy": "steps", "save_steps": 1, "report_to": "none",
                                   "model_init_kwargs": {"token": "hf_NESTEDSECRET2"}}))
    run_dir = tmp_path / "run"
    r = subprocess.run([*CLI, "train", str(cfg), "--run-dir", str(run_dir)], capture_output=True, text=True,
                       timeout=400, env={**os.environ, **ENV})
    assert r.returncode == 0, r.stderr[-2000:]
    leaked = [p for p in run_dir.rglob("*") if p.is_file() and b"hf_NESTEDSECRET2" in p.read_bytes()]
    assert not leaked, leaked
    assert (run_dir / "checkpoints" / "checkpoint-1" / "training_args.bin").is_file()  # it was looked at


# ------------------------------------------------------------------ 3. relative paths are the workspace's
def _session_from(cwd: Path, ws: Path, *extra):
    params = StdioServerParameters(command=sys.executable, args=["-m", "prefpilot.cli", "mcp", "--workspace", str(ws),
                                                                 *extra],
                                   env={**ENV, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}, cwd=str(cwd))
    return Client(params, read_timeout_seconds=120)


def test_relative_paths_resolve_in_the_workspace_not_the_servers_cwd(tmp_path, ws, tiny):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "data").mkdir(parents=True)
    (elsewhere / "data" / "prefs.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    (elsewhere / "some").mkdir()
    os.symlink(tiny, elsewhere / "some" / "model")  # a model folder beside the server, not in its workspace
    with start_blocking_portal() as portal:
        with portal.wrap_async_context_manager(_session_from(elsewhere, ws)) as client:
            r = call(portal, client, "launch_run", {"config": {**BASE, "dataset_path": "data/prefs.jsonl"},
                                                    "dry_run": True})
            assert r.is_error and "dataset_not_found" in text(r), text(r)
            r = call(portal, client, "validate_config", {"config": {**BASE, "model_name_or_path": "some/model"}})
            assert not r.is_error
            # read as a hub id (nothing at ws/some/model), never as the folder beside the server
            assert "model_download" in {w["code"] for w in r.structured_content["warnings"]}


def test_launch_reads_relative_paths_against_the_given_base(tmp_path, monkeypatch):
    base = tmp_path / "base"
    base.mkdir()
    (base / "d.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    monkeypatch.setattr(runs, "_spawn", lambda run_dir, args, secrets=None: {"pid": None})
    run_id = runs.launch({**BASE, "dataset_path": "d.jsonl"}, tmp_path / "runs", base=base)
    stored = yaml.safe_load((tmp_path / "runs" / run_id / "config.yaml").read_text())
    assert stored["dataset_path"] == str(base / "d.jsonl")


# ------------------------------------------------------------------ 4 and 7. every file diagnose reads is checked
def test_diagnose_run_does_not_follow_a_link_in_a_folder_out_of_the_workspace(tmp_path, ws):
    secret = tmp_path / "outside.jsonl"
    secret.write_text("TOP-SECRET line one\n" + json.dumps({"step": 1, "loss": 0.69}) + "\nTOP-SECRET two\n")
    (ws / "linkdir").mkdir()
    os.symlink(secret, ws / "linkdir" / "metrics.jsonl")
    (ws / "linkdir2" / "logs").mkdir(parents=True)
    os.symlink(secret, ws / "linkdir2" / "logs" / "events.out.tfevents.123.host")
    with session(ws) as (portal, client):
        for folder in ("linkdir", "linkdir2"):
            r = call(portal, client, "diagnose_run", {"metrics_path": folder})
            assert r.is_error and "TOP-SECRET" not in text(r), text(r)
        assert "outside the workspace" in text(call(portal, client, "diagnose_run", {"metrics_path": "linkdir"}))


def test_a_fifo_never_hangs_diagnose_in_the_cli_or_over_mcp(ws):
    (ws / "run" / "tb").mkdir(parents=True)
    os.mkfifo(ws / "run" / "tb" / "events.out.tfevents.1.host")
    (ws / "run2").mkdir()
    os.mkfifo(ws / "run2" / "metrics.jsonl")
    for folder in ("run", "run2"):
        r = subprocess.run([*CLI, "diagnose", str(ws / folder)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    with session(ws) as (portal, client):
        for folder in ("run", "run2"):
            r = call(portal, client, "diagnose_run", {"metrics_path": folder})  # was: no answer, ever
            assert r.is_error and "regular file" in text(r) + str(r.structured_content), text(r)


# ------------------------------------------------------------------ 5. the concurrency limit holds under a race
@pytest.mark.slow
def test_four_parallel_launches_with_a_limit_of_one_start_one_trainer(ws, tiny):
    """Four servers on one workspace (four agents, or one client restarted) launch at the same moment: the
    count of active runs and the start are one step under a lock on the runs root, across processes."""
    shutil.copytree(tiny, ws / "model")  # inside the workspace: a link out of it would be refused
    cfg = {"method": "dpo", "model_name_or_path": "model", "dataset_path": "builtin:arith-prefs", "max_steps": 5000,
           "per_device_train_batch_size": 2, "max_length": 64, "save_strategy": "no", "report_to": "none"}

    async def four():
        from contextlib import AsyncExitStack
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(_session_from(ws, ws, "--max-concurrent-runs", "1"))
                       for _ in range(4)]
            results = []

            async def one(client):
                results.append(await client.call_tool("launch_run", {"config": cfg}))
            async with anyio.create_task_group() as tg:
                for c in clients:
                    tg.start_soon(one, c)
            return results
    with start_blocking_portal() as portal:
        results = portal.call(four)
    try:
        started = [r for r in results if not r.is_error]
        refused = [r for r in results if r.is_error]
        assert len(started) == 1 and len(refused) == 3, [text(r)[:200] for r in results]
        assert all("already active" in text(r) for r in refused), [text(r)[:300] for r in refused]
        assert len([d for d in (ws / "runs").iterdir() if d.is_dir()]) == 1
    finally:
        for d in (ws / "runs").iterdir():
            if d.is_dir():
                runs.cancel(d.name, ws / "runs", grace=5)


# ------------------------------------------------------------------ 9. a status.json that is not an object
def test_a_status_json_list_or_fifo_breaks_no_listing_and_no_launch(ws, monkeypatch):
    root = ws / "runs"
    bad = root / "20261203-000000-dpo-x-aaaaaa"
    bad.mkdir(parents=True)
    (bad / "status.json").write_text("[1, 2]")
    for argv in (["runs", "list"], ["runs", "status", bad.name], ["runs", "list", "--json"]):
        r = subprocess.run([*CLI, *argv, "--root", str(root)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "unknown" in subprocess.run([*CLI, "runs", "status", bad.name, "--root", str(root)], capture_output=True,
                                       text=True, timeout=60).stdout
    fifo = root / "20261203-000001-dpo-x-bbbbbb"
    fifo.mkdir()
    os.mkfifo(fifo / "status.json")
    t0 = time.time()
    assert rundir.read_status(fifo) == {} and time.time() - t0 < 5  # was: blocked until a writer came
    monkeypatch.setattr(runs, "_spawn", lambda run_dir, args, secrets=None: {"pid": None})
    assert runs.launch(BASE, root, max_active=1)  # counting active runs reads every status.json
    with session(ws) as (portal, client):
        r = call(portal, client, "list_runs")
        assert not r.is_error and r.structured_content["total"] >= 2


# ------------------------------------------------------------------ 13. the operator's lease is a ceiling
@pytest.mark.slow
def test_the_servers_lease_caps_a_config_and_a_resume_grants_no_fresh_lease(ws, tiny):
    shutil.copytree(tiny, ws / "model")
    cfg = {"method": "dpo", "model_name_or_path": "model", "dataset_path": "builtin:arith-prefs", "max_steps": 100000,
           "per_device_train_batch_size": 2, "max_length": 64, "save_strategy": "no", "report_to": "none",
           "max_wall_time": 1e9}
    with session(ws, "--max-wall-time", "2") as (portal, client):
        r = call(portal, client, "launch_run", {"config": cfg})
        assert not r.is_error, text(r)
        run_id = r.structured_content["run_id"]
        stored = yaml.safe_load((ws / "runs" / run_id / "config.yaml").read_text())
        assert stored["max_wall_time"] == 2  # was 1e9: the config overrode the operator
        deadline = time.time() + 300
        while time.time() < deadline and runs.status(run_id, ws / "runs")["state"] in runs.ACTIVE:
            time.sleep(0.5)
        st = runs.status(run_id, ws / "runs")
        assert st["state"] == "cancelled" and st["lease_used_s"] >= 2, st
        r = call(portal, client, "resume_run", {"run_id": run_id})
        assert r.is_error and "lease" in text(r) and "--max-wall-time" in text(r), text(r)
    # a person may grant more: the new total is written where the trainer reads it
    runs._renew_lease(ws / "runs" / run_id, st, 600.0, None)
    assert yaml.safe_load((ws / "runs" / run_id / "config.yaml").read_text())["max_wall_time"] == 600.0
    with pytest.raises(PrefpilotError, match="lease"):
        runs._renew_lease(ws / "runs" / run_id, st, None, 1.0)  # and an operator's ceiling still caps it


# ------------------------------------------------------------------ 8 and 14. token files
def _http(ws, *extra, env=None):
    return subprocess.run([*CLI, "mcp", "--transport", "streamable-http", "--port", "1", "--workspace", str(ws),
                           *extra], capture_output=True, text=True, timeout=30, env=env or {**os.environ, **ENV})


def test_token_files_that_others_can_read_or_that_never_end_are_refused(ws, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    open_token = tmp_path / "token"
    open_token.write_text("a-token-of-more-than-sixteen-characters\n")
    open_token.chmod(0o644)
    binary = tmp_path / "bin-token"
    binary.write_bytes(b"\xff\xfe" * 20)
    binary.chmod(0o600)
    for path, why in ((fifo, "not a regular file"), ("/dev/zero", "not a regular file"),
                      (open_token, "chmod 600"), (binary, "UTF-8")):
        r = _http(ws, "--token-file", str(path))
        assert r.returncode != 0 and why in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_planted_generated_token_is_not_reused(ws, tmp_path):
    from prefpilot.mcp_http import resolve_token
    (ws / ".prefpilot").mkdir()
    planted = ws / ".prefpilot" / "mcp-token"
    planted.write_text("planted-token-known-to-someone-else\n")
    planted.chmod(0o666)
    with pytest.raises(PrefpilotError, match="chmod 600"):
        resolve_token(ws, "127.0.0.1", None, False)
    other = tmp_path / "ws2"
    other.mkdir()
    (tmp_path / "planted").mkdir()
    (tmp_path / "planted" / "mcp-token").write_text("planted-token-known-to-someone-else\n")
    os.symlink(tmp_path / "planted", other / ".prefpilot")
    with pytest.raises(PrefpilotError, match="symbolic link"):
        resolve_token(other, "127.0.0.1", None, False)


# ------------------------------------------------------------------ 16. #SBATCH lines
@pytest.mark.parametrize("run_dir,ok", [('a b" --wrap="touch /tmp/pwned', False), ("runs/%u-run", True)])
def test_emit_slurm_quotes_the_run_dir(tmp_path, run_dir, ok):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(BASE))
    r = subprocess.run([*CLI, "train", str(cfg), "--emit", "slurm", "--run-dir", run_dir], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    if not ok:
        assert r.returncode != 0 and "quote" in r.stderr and "Traceback" not in r.stderr, r.stderr
        return
    assert r.returncode == 0, r.stderr
    (output,) = [ln for ln in r.stdout.splitlines() if ln.startswith("#SBATCH --output")]
    assert "%%u" in output and "%j" in output  # Slurm would expand %u; mkdir makes the literal folder


# ------------------------------------------------------------------ 17. export
def test_export_leaves_tokens_out_of_the_trl_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**BASE, "hub_token": "hf_EXPORTSECRET", "model_init_kwargs": {
        "token": "hf_EXPORTSECRET", "dtype": "float32"}}))
    out = tmp_path / "trl.yaml"
    r = subprocess.run([*CLI, "export", "--trl", str(cfg), "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "hf_EXPORTSECRET" not in out.read_text() and "HF_TOKEN" in r.stdout + r.stderr
    assert yaml.safe_load(out.read_text())["model_init_kwargs"] == {"dtype": "float32"}
