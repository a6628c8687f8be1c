"""Slurm runs on a real cluster: two slurmd (nodes n1, n2) and a slurmctld on this machine (slurm_cluster.py).

The run manager submits, follows, cancels and resumes real jobs; a 2-node run is one accelerate launch per
node through srun (gloo on the CPU), ranks and the main address taken from Slurm. The cluster fixture skips
only when Slurm cannot be installed here (it says why).
"""
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

from prefpilot import rundir, runs, slurm
from prefpilot.errors import PrefpilotError
from prefpilot.train.launch import slurm_script
from slurm_cluster import LocalSlurm, Unavailable
import run_helpers
from run_helpers import config

pytestmark = pytest.mark.usefixtures("offline")

SLURM_2 = {"backend": "slurm", "nodes": 2, "gpus_per_node": 0}
SECRET = "hf_slurmtestsecret0123456789"


@pytest.fixture(scope="module")
def cluster():
    # not under pytest's tmp folder: munged wants its socket's folders open to all, pytest-of-root is 0700
    root = tempfile.mkdtemp(prefix="prefpilot-slurm-")
    c = LocalSlurm(root)
    try:
        c.start()
    except Unavailable as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"no Slurm cluster here: {exc}")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(c.conf)
    try:
        yield c
    finally:
        c.stop()
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        shutil.rmtree(root, ignore_errors=True)


def wait_for(pred, timeout=180, what="condition"):
    return run_helpers.wait_for(pred, timeout, what, every=0.5)  # each poll runs Slurm commands: not too often


def finished(run_id, root):
    s = runs.status(run_id, root)
    return s if s["state"] not in runs.ACTIVE else None


# ----------------------------------------------------------------------------- no cluster needed
def test_launch_options_time_limit_and_script():
    assert slurm.launch_options(None) == {"backend": "local"}
    opts = slurm.launch_options({"backend": "slurm", "nodes": 2}, {"partition": "gpu", "gpus_per_node": 8})
    assert opts["nodes"] == 2 and opts["gpus_per_node"] == 8 and opts["partition"] == "gpu" and opts["requeue"]
    for bad in ({"backend": "k8s"}, {"backend": "slurm", "nodes": 0}, {"backend": "slurm", "partition": "a b"},
                {"backend": "slurm", "time": "1:00\n#SBATCH --uid=0"}, {"backend": "local", "nodes": 2},
                {"backend": "slurm", "nodez": 2}):
        with pytest.raises(PrefpilotError):
            slurm.launch_options(bad)
    # max_wall_time -> --time: the lease left plus the start-up margin, in minutes; a signal well before it
    assert slurm.time_limit({}, {"max_wall_time": 3000}) == "60"
    assert slurm.time_limit({}, {"max_wall_time": 3000}, lease_used_s=1800) == "30"
    assert slurm.time_limit({"time": "1-00:00:00"}, {"max_wall_time": 60}) == "1-00:00:00"
    assert slurm.time_limit({}, {}) is None
    assert slurm.time_seconds("2-01:00:00") == 2 * 86400 + 3600 and slurm.time_seconds("90") == 5400
    assert slurm.signal_lead("60") == 120 and slurm.signal_lead("5") == 60
    s = slurm_script("/r/config.yaml", "/r", nodes=3, gpus_per_node=0, time_limit="60", signal_before_s=120,
                     requeue=True, run_manager=True, output="/r/train.log", account="proj")
    assert "#SBATCH --signal=TERM@120" in s and "#SBATCH --requeue" in s and "#SBATCH --account=proj" in s
    assert "--gpus-per-node" not in s and "--num_processes 3" in s and "--num_machines 3" in s
    assert '--main_process_port "$MASTER_PORT"' in s and "${PREFPILOT_RESUME:+--resume}" in s
    assert "#SBATCH --output=/r/train.log" in s and "--log-stderr" in s
    subprocess.run(["bash", "-n"], input=s, text=True, check=True)


def test_fsdp_or_deepspeed_file_reaches_every_node(tmp_path, monkeypatch):
    (tmp_path / "fsdp.yaml").write_text("distributed_type: FSDP\n")
    monkeypatch.chdir(tmp_path)
    opts = slurm.launch_options({"backend": "slurm", "nodes": 2, "gpus_per_node": 8, "fsdp_config_file": "fsdp.yaml"})
    assert opts["fsdp_config_file"] == str(tmp_path / "fsdp.yaml")  # absolute: the nodes start elsewhere
    for bad in ({"fsdp_config_file": "missing.yaml"}, {"fsdp_config_file": "fsdp.yaml", "deepspeed_config_file": "x"}):
        with pytest.raises(PrefpilotError):
            slurm.launch_options({"backend": "slurm", **bad})
    s = slurm_script("/r/config.yaml", "/r", nodes=2, gpus_per_node=8, fsdp=opts["fsdp_config_file"],
                     run_manager=True)
    assert f"--use_fsdp --config_file {tmp_path / 'fsdp.yaml'}" in s and "--multi_gpu" not in s


def test_status_of_a_slurm_run_imports_no_torch_and_survives_no_controller(tmp_path):
    """The run manager stays light with Slurm too; a controller that does not answer never ends a run."""
    d = tmp_path / "runs" / "20261207-000000-dpo-x-0123456789abcdef"
    d.mkdir(parents=True)
    rundir.update_status(d, state="running", backend="slurm")
    (d / "slurm.json").write_text(json.dumps({"backend": "slurm", "job_id": "4242", "jobs": []}))
    code = ("import sys, json; from prefpilot import runs, slurm; slurm.QUERY_TIMEOUT_S = 2; "
            f"s = runs.status({d.name!r}, {str(tmp_path / 'runs')!r}); "
            "print(json.dumps({'torch': 'torch' in sys.modules, 'state': s['state'], 'sched': s['scheduler']}))")
    env = {**os.environ, "SLURM_CONF": str(tmp_path / "no-such.conf")}
    out = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                    timeout=60, check=True).stdout)
    assert out["torch"] is False and out["state"] == "running" and out["sched"]["state"] == "unreachable", out


def test_launch_block_is_prefpilot_only(tiny):
    from prefpilot.config.export import export_trl
    from prefpilot.config.validate import validate
    cfg = config(tiny, max_steps=3, launch={"backend": "slurm", "nodes": 2, "partition": "gpu"})
    assert validate(cfg)["valid"]
    out, notes = export_trl(cfg)
    assert "launch" not in out and any("launch" in n for n in notes)
    report = validate(config(tiny, launch={"backend": "slurm", "nodes": 0, "partition": "a b"}))
    assert not report["valid"] and {e["path"] for e in report["errors"]} >= {"/launch/nodes", "/launch/partition"}


# ----------------------------------------------------------------------------- on the cluster
@pytest.mark.slow
def test_two_node_run_completes_through_slurm(cluster, tiny, tmp_path):
    root = tmp_path / "runs"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config(tiny, max_steps=8, hub_token=SECRET)))
    out = subprocess.run([sys.executable, "-m", "prefpilot.cli", "runs", "--root", str(root), "launch", str(cfg),
                          "--backend", "slurm", "--nodes", "2", "--gpus-per-node", "0", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    launched = json.loads(out.stdout)
    run_id, jid = launched["run_id"], launched["job_id"]
    assert launched["backend"] == "slurm" and jid.isdigit() and launched["state"] in runs.ACTIVE
    final = wait_for(lambda: finished(run_id, root), what="the 2-node run to finish")
    assert final["state"] == "completed", runs.logs(run_id, root, tail=60)
    assert final["step"] == final["total_steps"] == 8 and final["backend"] == "slurm" and final["job_id"] == jid
    rows = rundir.read_metrics(root / run_id)
    assert [r["step"] for r in rows] == list(range(1, 9))  # rank 0 writes the metrics, once
    assert rows[0]["epoch"] == pytest.approx(4 / 320)  # two processes × 2 pairs per step
    log = runs.logs(run_id, root, tail=2000)  # the job's output is the run's train.log
    assert "process rank 0 of world size 2 on node n1" in log and "process rank 1 of world size 2 on node n2" in log
    assert f"prefpilot: job {jid} on n[1-2], rank 0 at 127.0.0.1:" in log
    script = (root / run_id / "job.sbatch").read_text()
    assert "#SBATCH --nodes=2" in script and shlex.quote(sys.executable) in script
    # the token reached the job through the environment: it is in no file of the run
    for f in (root / run_id).rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f
    wait_for(lambda: jid not in cluster.squeue(), 60, "the job to leave the queue")  # its script's last lines
    # the CLI shows it beside local runs
    env = {**os.environ}
    st = subprocess.run([sys.executable, "-m", "prefpilot.cli", "runs", "--root", str(root), "list"], env=env,
                        capture_output=True, text=True, timeout=60)
    assert run_id in st.stdout and f"slurm job {jid}" in st.stdout


@pytest.mark.slow
def test_cancel_checkpoints_then_resume_is_a_new_job(cluster, tiny, tmp_path):
    root = tmp_path / "runs"
    run_id = runs.launch(config(tiny, max_steps=60, learning_rate=1e-4), root, launch_options=SLURM_2)
    first = runs.status(run_id, root)["job_id"]
    wait_for(lambda: (rundir.last_metrics(root / run_id) or {}).get("step", 0) >= 10, what="10 steps")
    s = runs.cancel(run_id, root, grace=60)
    assert s["state"] == "cancelled" and s["error"] == "cancelled by request", s
    ck = s["checkpoint"]
    assert ck and rundir.checkpoint_step(ck) >= 10 and first not in cluster.squeue()
    log = runs.logs(run_id, root, tail=500)
    # each rank says so when the signal finds it in the loop; one that learned it from the step's agreement first
    # stays silent. Either way one checkpoint, of one step, for both
    assert 1 <= log.count("stop requested; saving a checkpoint after this step") <= 2
    assert [p.name for p in (root / run_id / "checkpoints").iterdir() if p.name.startswith("checkpoint-")] == \
        [os.path.basename(ck)]
    r = runs.resume(run_id, root)
    second = r["job_id"]
    assert second != first and r["state"] in runs.ACTIVE and r["resumed_from"] == ck
    final = wait_for(lambda: finished(run_id, root), what="the resumed run to finish")
    assert final["state"] == "completed", runs.logs(run_id, root, tail=60)
    assert [row["step"] for row in rundir.read_metrics(root / run_id)] == list(range(1, 61))
    assert f"resuming from {os.path.basename(ck)}" in runs.logs(run_id, root, tail=2000)
    assert [j["job_id"] for j in slurm.read(root / run_id)["jobs"]] == [first, second]
    wait_for(lambda: not cluster.squeue(), 60, "the job to leave the queue")


@pytest.mark.slow
def test_a_job_that_cannot_start_is_pending_with_its_reason(cluster, tiny, tmp_path, capsys):
    root = tmp_path / "runs"
    # partition `one` has one node: a 2-node job there waits (PartitionConfig)
    run_id = runs.launch(config(tiny, max_steps=5, max_wall_time=600), root,
                         launch_options={**SLURM_2, "partition": "one"})
    s = wait_for(lambda: (s := runs.status(run_id, root))["scheduler"].get("reason") and s, 30, "a pending reason")
    assert s["state"] == "queued" and s["scheduler"]["state"] == "pending", s
    assert s["scheduler"]["reason"] == "PartitionConfig"
    script = (root / run_id / "job.sbatch").read_text()
    assert "#SBATCH --time=20" in script and "#SBATCH --signal=TERM@120" in script  # max_wall_time 600 s + 10 min
    from prefpilot.cli import main as cli
    assert cli(["runs", "--root", str(root), "status", run_id]) == 0
    assert "pending (PartitionConfig)" in capsys.readouterr().out
    # a pending job counts against --max-concurrent-runs like a running one
    with pytest.raises(PrefpilotError) as e:
        runs.launch(config(tiny, max_steps=5), root, launch_options=SLURM_2, max_active=1)
    assert e.value.code == "too_many_runs"
    c = runs.cancel(run_id, root)
    assert c["state"] == "cancelled" and "before it started" in c["error"]
    assert s["job_id"] not in cluster.squeue()
    # a job sbatch refuses: the run is failed with Slurm's words, never left queued
    with pytest.raises(PrefpilotError) as e:
        runs.launch(config(tiny, max_steps=5), root, launch_options={**SLURM_2, "partition": "nosuch"})
    assert e.value.code == "slurm_error" and "partition" in str(e.value).lower()
    failed = [r for r in runs.list_runs(root) if r["state"] == "failed"]
    assert len(failed) == 1 and failed[0]["backend"] == "slurm" and "sbatch refused" in failed[0]["error"]
    # GPUs asked of a config that trains on the CPU: the CLI says so (and this cluster has no GPU to give)
    cfg = tmp_path / "cpu.yaml"
    cfg.write_text(yaml.safe_dump(config(tiny, max_steps=5, use_cpu=True)))
    r = subprocess.run([sys.executable, "-m", "prefpilot.cli", "runs", "--root", str(root), "launch", str(cfg),
                        "--backend", "slurm", "--gpus-per-node", "1"], capture_output=True, text=True, timeout=120)
    assert "use_cpu: true" in r.stderr and "1 node(s) × 1 GPU(s)" in r.stderr and "Traceback" not in r.stderr
    assert r.returncode != 0 and "sbatch refused the job" in r.stderr  # no gres here: nothing left queued


@pytest.mark.slow
def test_mcp_launches_and_follows_a_slurm_run(cluster, tiny, tmp_path):
    from anyio.from_thread import start_blocking_portal
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copytree(tiny, ws / "model")
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "prefpilot.cli", "mcp", "--workspace", str(ws)], cwd=str(ws),
        env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
             "PYTHONPATH": os.environ.get("PYTHONPATH", ""), "SLURM_CONF": str(cluster.conf)})
    cfg = {**config("model", max_steps=5), "launch": {"backend": "slurm", "nodes": 2, "gpus_per_node": 0}}
    with start_blocking_portal() as portal:
        with portal.wrap_async_context_manager(Client(params, read_timeout_seconds=120)) as client:
            # a sharding config file is a path like any other: outside the workspace it is refused
            bad = {**cfg, "launch": {**cfg["launch"], "fsdp_config_file": "/etc/passwd"}}
            r = portal.call(client.call_tool, "launch_run", {"config": bad})
            assert r.is_error and "workspace" in r.content[0].text, r.content
            r = portal.call(client.call_tool, "launch_run", {"config": cfg})
            assert not r.is_error, r.content
            run_id = r.structured_content["run_id"]
            s = portal.call(client.call_tool, "run_status", {"run_id": run_id}).structured_content
            assert s["backend"] == "slurm" and s["job_id"] and s["scheduler"]["state"] in ("pending", "running")
            deadline = time.time() + 180
            while s["state"] in runs.ACTIVE and time.time() < deadline:
                time.sleep(1)
                s = portal.call(client.call_tool, "run_status", {"run_id": run_id}).structured_content
            assert s["state"] == "completed", s
            page = portal.call(client.call_tool, "list_runs", {}).structured_content
            assert [(x["run_id"], x["backend"], x["job_id"]) for x in page["runs"]] == [(run_id, "slurm", s["job_id"])]
            log = portal.call(client.call_tool, "run_logs", {"run_id": run_id, "tail": 2000})
            assert "of world size 2 on node n2" in "".join(c.text for c in log.content)
    assert (ws / "runs" / run_id / "job.sbatch").is_file()
    wait_for(lambda: not cluster.squeue(), 60, "the job to leave the queue")


@pytest.mark.slow
def test_a_requeued_job_continues_from_its_checkpoint(cluster, tiny, tmp_path):
    """What preemption does to a job: Slurm stops it (SIGTERM to every task: the trainer checkpoints) and queues it
    again; the restarted job (SLURM_RESTART_COUNT 1) resumes from the checkpoint into the same run dir."""
    root = tmp_path / "runs"
    # 200 steps: on a loaded machine the requeue must still land mid-run (a run that finished first has nothing
    # to continue, and its status carries no scheduler view)
    run_id = runs.launch(config(tiny, max_steps=200, learning_rate=1e-4), root, launch_options=SLURM_2)
    jid = runs.status(run_id, root)["job_id"]
    wait_for(lambda: (rundir.last_metrics(root / run_id) or {}).get("step", 0) >= 10, what="10 steps")
    subprocess.run(["scontrol", "requeue", jid], env=cluster.env, check=True, capture_output=True, timeout=30)
    # Slurm holds a requeued job back for a while (BeginTime): the run reads queued with that reason meanwhile
    s = wait_for(lambda: ((s := runs.status(run_id, root)).get("scheduler") or {}).get("reason") == "BeginTime"
                 and s, 60, "the requeued job to wait")
    assert s["state"] == "queued" and s["requeued_at"] and s["scheduler"]["state"] == "pending"
    subprocess.run(["scontrol", "update", f"JobId={jid}", "StartTime=now"], env=cluster.env, check=True,
                   capture_output=True, timeout=30)  # rather than wait out the delay
    # between the stop and the restart the run reads queued again (status.json said cancelled, Slurm pends it)
    final = wait_for(lambda: (s := runs.status(run_id, root))["state"] in ("completed", "failed") and s, 240,
                     "the requeued job to finish")
    assert final["state"] == "completed", runs.logs(run_id, root, tail=80)
    log = runs.logs(run_id, root, tail=3000)
    assert f"prefpilot: job {jid} on n[1-2]" in log and "restart 1" in log and "resuming from checkpoint-" in log
    assert [row["step"] for row in rundir.read_metrics(root / run_id)] == list(range(1, 201))
    assert [j["job_id"] for j in slurm.read(root / run_id)["jobs"]] == [jid]  # the same job, not a resume


@pytest.mark.slow
def test_a_job_requeued_after_its_run_completed_leaves_the_run_as_it_was(cluster, tiny, tmp_path):
    """Slurm can run a batch job again after it finished (an admin's requeue, a node lost at its very end): the
    restarted job (--resume) must not train again over the saved model, its metrics and its status."""
    root = tmp_path / "runs"
    run_id = runs.launch(config(tiny, max_steps=6), root, launch_options=SLURM_2)
    jid = runs.status(run_id, root)["job_id"]
    done = wait_for(lambda: (s := runs.status(run_id, root))["state"] in ("completed", "failed") and s, 240,
                    "the run to finish")
    assert done["state"] == "completed", runs.logs(run_id, root, tail=60)
    wait_for(lambda: jid not in cluster.squeue(), 60, "the job to leave the queue")
    d = root / run_id
    weights = {f: f.stat().st_mtime_ns for f in (d / "final").iterdir()}
    metrics = (d / "metrics.jsonl").read_bytes()
    subprocess.run(["scontrol", "requeue", jid], env=cluster.env, check=True, capture_output=True, timeout=30)
    subprocess.run(["scontrol", "update", f"JobId={jid}", "StartTime=now"], env=cluster.env, check=True,
                   capture_output=True, timeout=30)
    wait_for(lambda: "already completed at step 6" in runs.logs(run_id, root, tail=200), 120,
             "the requeued job to say the run is complete")
    wait_for(lambda: jid not in cluster.squeue(), 60, "the requeued job to leave the queue")
    after = runs.status(run_id, root)
    assert after["state"] == "completed" and after["step"] == 6 and after["finished_at"] == done["finished_at"]
    assert {f: f.stat().st_mtime_ns for f in (d / "final").iterdir()} == weights
    assert (d / "metrics.jsonl").read_bytes() == metrics


@pytest.mark.slow
def test_a_stop_by_the_live_diagnosis_stops_every_node(cluster, tiny, tmp_path):
    """Only rank 0 diagnoses; the other node learns of the stop at the next step, so both save and leave the loop
    together instead of one waiting for ever in a collective."""
    root = tmp_path / "runs"
    cfg = config(tiny, max_steps=200, learning_rate=1e-4, diagnose={"stop_on": "warning", "min_steps": 0, "every_s": 0.01})
    run_id = runs.launch(cfg, root, launch_options=SLURM_2)
    jid = runs.status(run_id, root)["job_id"]
    final = wait_for(lambda: finished(run_id, root), what="the run to stop")
    assert final["state"] == "failed" and "stopped by the live diagnosis" in final["error"], final
    assert final["stopped_by"]["severity"] in ("warning", "error") and final["checkpoint"]
    wait_for(lambda: jid not in cluster.squeue(), 60, "the job to leave the queue")  # no rank left hanging
    assert rundir.checkpoint_step(final["checkpoint"]) < 200


@pytest.mark.slow
def test_a_job_killed_by_slurm_fails_the_run_with_slurms_state(cluster, tiny, tmp_path):
    """SIGKILL from the scheduler (what a node failure or an admin's kill looks like): the trainer writes nothing,
    and the run is failed from Slurm's own record of the job, with the log's tail."""
    root = tmp_path / "runs"
    run_id = runs.launch(config(tiny, max_steps=400, learning_rate=1e-4), root, launch_options=SLURM_2)
    jid = runs.status(run_id, root)["job_id"]
    wait_for(lambda: (rundir.last_metrics(root / run_id) or {}).get("step", 0) >= 5, what="5 steps")
    subprocess.run(["scancel", "--signal=KILL", jid], env=cluster.env, check=True, capture_output=True, timeout=30)
    final = wait_for(lambda: finished(run_id, root), 60, "the run to be settled")
    assert final["state"] == "failed" and f"Slurm job {jid} ended" in final["error"], final
    assert "without the trainer writing a final state" in final["error"] and final["log_tail"]
    assert final["scheduler"]["state"] == "finished" and final["scheduler"]["slurm_state"] in ("CANCELLED", "FAILED")
