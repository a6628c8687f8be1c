"""The run manager under races and forged state (no training needed): a planted pid is never signalled,
launch/resume/cancel of one run are exclusive, a failed spawn ends 'failed', queued runs can be cancelled,
thousands of stale runs list quickly. Each test here failed before."""
import subprocess
import sys
import threading
import time

import pytest

from prefpilot import rundir, runs
from prefpilot.errors import PrefpilotError


def make_run(root, run_id="20261123-120000-dpo-m-0123456789abcdef", **status):
    d = root / run_id
    d.mkdir(parents=True)
    (d / "config.yaml").write_text("method: dpo\n")
    rundir.update_status(d, run_id=run_id, method="dpo", created_at=rundir.now(), **status)
    return run_id, d


def fake_trainer(run_dir, ignore_term=False):
    """A process whose command line is the trainer's for ``run_dir`` (so it passes the identity check)."""
    code = ("import signal, time\n" + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else "")
            + "time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, "-m", "prefpilot.train.entry", "--run-dir", str(run_dir)],
                         start_new_session=True)
    time.sleep(0.3)
    return p, runs._proc_stat(p.pid)[1]


def test_a_planted_pid_is_never_signalled(tmp_path):
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        for started in (None, runs._proc_stat(bystander.pid)[1]):  # with and without a matching start time
            run_id, _ = make_run(tmp_path / f"r{started}", state="running", pid=bystander.pid, pid_started=started)
            runs.cancel(run_id, tmp_path / f"r{started}", grace=1)
            assert bystander.poll() is None, "an unrelated process was signalled"
            assert runs.status(run_id, tmp_path / f"r{started}")["state"] == "failed"
    finally:
        bystander.kill()


def test_a_second_cancel_does_not_send_a_second_sigterm(tmp_path):
    run_id, d = make_run(tmp_path, state="running")
    p, started = fake_trainer(d, ignore_term=True)
    rundir.update_status(d, pid=p.pid, pid_started=started)
    first = threading.Thread(target=runs.cancel, args=(run_id, tmp_path), kwargs={"grace": 3})
    first.start()
    time.sleep(0.5)
    second = runs.cancel(run_id, tmp_path, grace=3)  # would turn checkpoint-and-stop into an immediate stop
    assert "already requested" in second["note"]
    first.join(30)
    assert p.wait(10) is not None and runs.status(run_id, tmp_path)["state"] == "cancelled"


def test_cancel_of_a_queued_run_without_a_process(tmp_path):
    run_id, _ = make_run(tmp_path, state="queued")
    assert runs.cancel(run_id, tmp_path)["state"] == "cancelled"


def test_parallel_resumes_start_one_trainer(tmp_path, monkeypatch):
    run_id, d = make_run(tmp_path, state="failed")
    started = []

    def spawn(run_dir, args, secrets=None):
        p, st = fake_trainer(run_dir)
        started.append(p)
        return {"pid": p.pid, "pid_started": st}
    monkeypatch.setattr(runs, "_spawn", spawn)
    errors = []

    def resume():
        try:
            runs.resume(run_id, tmp_path)
        except PrefpilotError as exc:
            errors.append(exc.code)
    threads = [threading.Thread(target=resume) for _ in range(6)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    try:
        assert len(started) == 1 and errors == ["run_active"] * 5
    finally:
        for p in started:
            p.kill()


def test_a_spawn_that_fails_ends_failed_not_queued(tmp_path, monkeypatch):
    def broken(run_dir, args, secrets=None):
        raise FileNotFoundError(2, "No such file or directory")
    monkeypatch.setattr(runs, "_spawn", broken)
    with pytest.raises(PrefpilotError, match="could not start"):
        runs.launch({"method": "dpo", "model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
                     "dataset_path": "builtin:arith-prefs"}, tmp_path)
    (only,) = runs.list_runs(tmp_path)
    assert only["state"] == "failed" and "could not start" in only["error"]


def test_listing_many_stale_runs_is_fast(tmp_path):
    for i in range(400):
        make_run(tmp_path, f"20261123-120000-dpo-m-{i:016x}", state="running", pid=999999, pid_started="1")
    t0 = time.perf_counter()
    rows = runs.list_runs(tmp_path)
    assert len(rows) == 400 and {r["state"] for r in rows} == {"failed"}
    assert time.perf_counter() - t0 < 10  # was 50 ms of sleep per run


def test_train_run_dirs_are_listed_and_never_trained_twice(tmp_path, monkeypatch):
    from prefpilot.cli import default_run_dir
    monkeypatch.setenv("PREFPILOT_RUNS", str(tmp_path))
    d = default_run_dir({"method": "dpo", "model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"})
    assert runs.RUN_ID.match(d.rsplit("/", 1)[1])
    from prefpilot.train.trainer import train
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metrics.jsonl").write_text('{"step": 1, "loss": 0.69}\n')
    with pytest.raises(PrefpilotError, match="--resume"):
        train({"method": "dpo", "model_name_or_path": "m", "dataset_path": "builtin:arith-prefs"}, tmp_path / "old")
