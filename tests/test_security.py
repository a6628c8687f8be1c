"""What an agent cannot do through the MCP server (the real server over stdio, the SDK's real client):
reach the network, pass a secret, point a path-valued config key or a model outside the workspace, read a
run config above it, or follow a symlinked run folder. Plus the completeness of the path-key list, checked
against the generated schemas. Each of these was possible before."""
import json
import os
import re
import shutil

import pytest
import yaml

from prefpilot.config.policy import NOT_PATHS, PATH_KEYS, network_options, split_secrets
from prefpilot.config.validate import schema
from test_mcp import call, session, text

BASE = {"method": "dpo", "model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "dataset_path": "builtin:arith-prefs"}


@pytest.fixture
def ws(tmp_path):
    w = tmp_path / "ws"
    w.mkdir()
    return w


def test_every_path_valued_schema_key_is_classified():
    for method in ("dpo", "simpo"):
        for key, prop in schema(method)["properties"].items():
            desc = (prop.get("description") or "").lower()
            says_path = re.search(r"\b(path|file|directory|folder)\b", desc) or re.search(r"(_dir|_path|_file)$", key)
            if says_path and not key.startswith(("hub_", "trackio_")) and key not in ("push_to_hub", "report_to"):
                assert key in PATH_KEYS or key in NOT_PATHS, f"{method}.{key} may take a path: classify it"


@pytest.mark.parametrize("extra", [
    {"push_to_hub": True, "hub_model_id": "me/model"}, {"report_to": "wandb"}, {"report_to": ["all"]},
    {"trackio_space_id": "me/space"}, {"hub_strategy": "every_save"}])
def test_network_options_are_refused_over_mcp_and_warned_in_the_cli(ws, extra):
    assert network_options({**BASE, **extra})
    with session(ws) as (portal, client):
        r = call(portal, client, "validate_config", {"config": {**BASE, **extra}})
        assert r.is_error and "--allow-network" in text(r)
        r = call(portal, client, "launch_run", {"config": {**BASE, **extra}, "dry_run": True})
        assert r.is_error and "network_refused" in text(r)
    from prefpilot.config.validate import validate
    assert any(w["code"] == "network" for w in validate({**BASE, **extra}, complete=False)["warnings"])


def test_network_options_pass_with_the_server_flag(ws):
    with session(ws, "--allow-network") as (portal, client):
        r = call(portal, client, "validate_config", {"config": {**BASE, "report_to": "wandb"}})
        assert not r.is_error


def test_secrets_are_refused_over_mcp_and_kept_out_of_run_folders(ws, tmp_path, monkeypatch):
    with session(ws, "--allow-network") as (portal, client):
        r = call(portal, client, "validate_config", {"config": {**BASE, "hub_token": "hf_SECRET123"}})
        assert r.is_error and "HF_TOKEN" in text(r) and "hf_SECRET123" not in text(r)
    clean, env = split_secrets({**BASE, "hub_token": "hf_SECRET123"})
    assert "hub_token" not in clean and env == {"HF_TOKEN": "hf_SECRET123"}
    # the run manager writes config.yaml without it and hands it to the trainer's environment
    from prefpilot import runs
    seen = {}

    def spawn(run_dir, args, secrets=None):
        seen.update(secrets or {})
        return {"pid": None}
    monkeypatch.setattr(runs, "_spawn", spawn)
    run_id = runs.launch({**BASE, "hub_token": "hf_SECRET123"}, tmp_path / "runs")
    stored = (tmp_path / "runs" / run_id / "config.yaml").read_text()
    assert "hf_SECRET123" not in stored and seen == {"HF_TOKEN": "hf_SECRET123"}


@pytest.mark.parametrize("key", ["deepspeed", "fsdp_config", "accelerator_config", "resume_from_checkpoint",
                                 "output_dir"])
def test_path_valued_keys_are_confined(ws, tmp_path, key):
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    with session(ws) as (portal, client):
        for value in (str(outside), "../outside.json", "/etc/passwd"):
            r = call(portal, client, "validate_config", {"config": {**BASE, key: value}})
            assert r.is_error and "outside the workspace" in text(r), (key, value, text(r))


def test_plan_and_diagnose_read_nothing_outside_the_workspace(ws, tmp_path):
    model = tmp_path / "outside-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    # a run config above the workspace that diagnose_run must not pick up
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"method": "simpo", "beta": 7.0}))
    (ws / "m").mkdir()
    (ws / "m" / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 0.69, "rewards/margins": 0.0,
                                                                  "grad_norm": 1.0}) + "\n" for s in range(1, 8)))
    with session(ws) as (portal, client):
        r = call(portal, client, "plan_run", {"model": str(model)})
        assert r.is_error and "outside the workspace" in text(r)
        r = call(portal, client, "diagnose_run", {"metrics_path": "m/metrics.jsonl", "plot": False})
        assert not r.is_error and r.structured_content["method"] == "dpo"  # not the simpo config above it


def test_symlinked_run_folders_and_logs_are_not_followed(ws, tmp_path):
    runs_root = ws / "runs"
    real = runs_root / "20261123-120000-dpo-m-0123456789abcdef"
    real.mkdir(parents=True)
    (real / "status.json").write_text(json.dumps({"state": "completed", "run_id": real.name}))
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET LINE\n")
    (real / "train.log").symlink_to(secret)
    linked = runs_root / "20261123-120001-dpo-m-0123456789abcdef"
    outside = tmp_path / "outside-run"
    outside.mkdir()
    (outside / "status.json").write_text(json.dumps({"state": "completed"}))
    linked.symlink_to(outside, target_is_directory=True)
    with session(ws) as (portal, client):
        for run_id in (real.name, linked.name):
            for tool, args in (("run_logs", {"run_id": run_id}), ("run_status", {"run_id": run_id})):
                r = call(portal, client, tool, args)
                assert r.is_error and "symbolic link" in text(r) and "TOP SECRET" not in text(r), (tool, run_id)
