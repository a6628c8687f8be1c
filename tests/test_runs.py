"""The run manager with real detached training processes (tiny model), and diagnosis of what they wrote."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from prefpilot import rundir, runs
from prefpilot.diagnosis import diagnose
from prefpilot.errors import PrefpilotError
from run_helpers import config, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("offline")]




def test_launch_from_a_caller_that_exits_then_follow_and_diagnose(tiny, tmp_path, capsys):
    root = tmp_path / "runs"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config(tiny, max_steps=30, save_strategy="steps", save_steps=10)))
    # the launching process exits at once; the training must outlive it
    out = subprocess.run([sys.executable, "-m", "prefpilot.cli", "runs", "--root", str(root), "launch", str(cfg),
                          "--json"], capture_output=True, text=True, timeout=60, check=True)
    run_id = json.loads(out.stdout)["run_id"]
    assert runs.RUN_ID.match(run_id) and "-dpo-" in run_id
    final = wait_for(lambda: (s := runs.status(run_id, root))["state"] in ("completed", "failed") and s,
                     what="the run to finish")
    assert final["state"] == "completed", final.get("log_tail")
    assert final["step"] == final["total_steps"] == 30 and final["percent"] == 100.0
    assert final["last_metrics"]["step"] == 30 and "loss" in final["last_metrics"]
    assert [r["run_id"] for r in runs.list_runs(root)] == [run_id]
    log = runs.logs(run_id, root, tail=200)
    assert "chosen: fp32" in log and log.count("chosen: fp32") == 1  # logged once, not twice
    assert sorted(p.name for p in root.iterdir()) == [run_id]  # nothing written outside the run dir

    # diagnosis by run id (CLI) and of the real trainer_state.json TRL wrote
    from prefpilot.cli import main as cli
    code = cli(["diagnose", run_id, "--root", str(root), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code in (0, 3) and report["parsed"]["rows"] == 30 and report["parsed"]["format"] == "jsonl"
    state = root / run_id / "checkpoints/checkpoint-30/trainer_state.json"
    r2 = diagnose(state)
    assert r2["parsed"]["format"] == "trainer_state.json" and r2["parsed"]["rows"] == 30
    assert r2["method"] == "dpo" and r2["steps"] == 30  # method from the run's config.yaml
    assert {"loss", "rewards/margins", "rewards/accuracies", "logps/chosen"} <= set(r2["parsed"]["used_keys"])


def test_cancel_checkpoints_then_resume_continues(tiny, tmp_path):
    root = tmp_path / "runs"
    run_id = runs.launch(config(tiny, max_steps=300, learning_rate=1e-4), root)
    wait_for(lambda: (rundir.last_metrics(root / run_id) or {}).get("step", 0) >= 20, what="20 steps")
    st = runs.cancel(run_id, root, grace=120)
    assert st["state"] == "cancelled" and not runs.pid_alive(st["pid"], st.get("pid_started"))
    assert st["checkpoint"] and os.path.isdir(st["checkpoint"]), "a graceful cancel saves a checkpoint"
    stopped_at = int(st["checkpoint"].rsplit("-", 1)[1])
    assert 20 <= stopped_at < 300
    assert runs.cancel(run_id, root)["note"].startswith("nothing to cancel")

    runs.resume(run_id, root)
    done = wait_for(lambda: (s := runs.status(run_id, root))["state"] in ("completed", "failed") and s,
                    what="the resumed run")
    assert done["state"] == "completed", done.get("log_tail")
    steps = [r["step"] for r in rundir.read_metrics(root / run_id)]
    assert steps == list(range(1, 301))
    with pytest.raises(PrefpilotError, match="already completed"):
        runs.resume(run_id, root)
    # the cancel's checkpoint is history now: `runs status` must not offer to resume a completed run
    assert done.get("checkpoint") is None
    shown = subprocess.run([sys.executable, "-m", "prefpilot.cli", "runs", "status", run_id, "--root", str(root)],
                           capture_output=True, text=True, timeout=60).stdout
    assert "completed" in shown and "runs resume" not in shown


def test_a_killed_process_is_reported_failed_with_its_log(tiny, tmp_path):
    root = tmp_path / "runs"
    a = runs.launch(config(tiny, max_steps=5000), root)
    b = runs.launch(config(tiny, max_steps=5000), root)  # same second: its own directory
    assert a != b and (root / a).is_dir() and (root / b).is_dir()
    st = wait_for(lambda: (s := runs.status(a, root))["state"] == "running" and s, what="running")
    os.killpg(st["pid"], signal.SIGKILL)  # out-of-memory killer style: no chance to write a final state
    failed = wait_for(lambda: (s := runs.status(a, root))["state"] == "failed" and s, timeout=30, what="failed")
    assert "ended without writing a final state" in failed["error"]
    assert isinstance(failed["log_tail"], list)
    assert runs.status(b, root)["state"] in ("queued", "running")  # the other run is untouched
    assert runs.cancel(b, root, grace=30)["state"] == "cancelled"


def test_a_cancel_during_start_up_is_cancelled_not_failed(tiny, tmp_path):
    # SIGTERM can land in the middle of importing torch/transformers. The handler once imported a module there,
    # failed on the half-initialised one, and the run ended "failed" with a circular-import error.
    root = tmp_path / "runs"
    for delay in (0.0, 1.0, 2.0, 3.0):
        run_id = runs.launch(config(tiny, max_steps=5000), root)
        wait_for(lambda: runs.status(run_id, root)["state"] == "running", what="running")
        time.sleep(delay)
        st = runs.cancel(run_id, root, grace=30)
        assert st["state"] == "cancelled", (delay, st.get("error"), st.get("log_tail"))


def test_invalid_configs_and_ids_are_refused(tiny, tmp_path):
    root = tmp_path / "runs"
    with pytest.raises(PrefpilotError) as e:
        runs.launch(config(tiny, beta=-1), root)
    assert e.value.code == "invalid_config" and e.value.details["errors"][0]["path"] == "/beta"
    assert not root.exists() or list(root.iterdir()) == []
    for bad in ("../etc", "/tmp/x", "a b", "", "A..", None, "x" * 200):
        with pytest.raises(PrefpilotError, match="not valid"):
            runs.status(bad, root)
    with pytest.raises(PrefpilotError, match="no run"):
        runs.status("20260101-000000-dpo-x-abcdef", root)
