"""Training as processes: kill and resume, accelerate with 2 CPU processes, the CLI, Slurm emission."""
import os
import signal
import shlex
import subprocess
import sys
import time

import pytest
import yaml

from prefpilot import rundir
from tiny_model import build_tiny_model

pytestmark = pytest.mark.slow
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def write_config(path, tiny, **extra):
    cfg = {"model_name_or_path": str(tiny), "dataset_path": "builtin:arith-prefs", "per_device_train_batch_size": 2,
           "learning_rate": 5e-3, "max_length": 64, "save_strategy": "no", **extra}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_resume_after_kill_keeps_metrics_continuous(tiny, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tiny, max_steps=160, save_strategy="steps", save_steps=20)
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "prefpilot.train.entry", str(cfg), "--run-dir", str(run)], env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "checkpoints/checkpoint-40").is_dir() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = len(rundir.read_metrics(run))
    assert rundir.read_status(run)["state"] == "running" and 40 <= killed_at < 160  # died mid-run
    r = subprocess.run([sys.executable, "-m", "prefpilot.train.entry", str(cfg), "--run-dir", str(run), "--resume"],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    steps = [row["step"] for row in rundir.read_metrics(run)]
    assert steps == list(range(1, 161)), steps[:5]
    assert rundir.read_status(run)["state"] == "completed"
    assert "resuming from checkpoint-" in (run / "train.log").read_text()


def test_accelerate_two_cpu_processes(tiny, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tiny, max_steps=3)
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "prefpilot.cli", "train", str(cfg), "--run-dir", str(run),
                        "--launcher", "accelerate", "--num-processes", "2"], env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = rundir.read_metrics(run)
    assert [x["step"] for x in rows] == [1, 2, 3]  # rank 0 only: no duplicated rows
    # two processes × 2 pairs per step over 320 pairs: 4 pairs per step
    assert rows[0]["epoch"] == pytest.approx(4 / 320)
    assert rundir.read_status(run)["state"] == "completed"


def test_cli_train_refuses_invalid_config(tmp_path, tiny):
    cfg = write_config(tmp_path / "c.yaml", tiny, beta=-1)
    r = subprocess.run([sys.executable, "-m", "prefpilot.cli", "train", str(cfg), "--run-dir", str(tmp_path / "r")],
                       env=ENV, capture_output=True, text=True)
    assert r.returncode == 1 and "/beta" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r").exists()


def test_emit_slurm(tmp_path, tiny):
    cfg = write_config(tmp_path / "c.yaml", tiny, max_steps=3, use_cpu=True)
    r = subprocess.run([sys.executable, "-m", "prefpilot.cli", "train", str(cfg), "--emit", "slurm",
                        "--num-machines", "4", "--gpus-per-node", "8", "--run-dir", str(tmp_path / "r")],
                       env=ENV, capture_output=True, text=True)
    assert r.returncode == 0
    s = r.stdout
    assert "#SBATCH --nodes=4" in s and "--num_processes 32" in s and '--machine_rank "$SLURM_NODEID"' in s
    assert '--main_process_ip "$MASTER_ADDR"' in s and "prefpilot.train.entry" in s
    assert shlex.quote(sys.executable) in s  # this venv's interpreter, not a bare `python` from PATH
    subprocess.run(["bash", "-n"], input=s, text=True, check=True)  # the script parses
    # a config that trains on the CPU: a GPU script from it says so; without use_cpu, no word
    assert "use_cpu: true" in r.stderr and "4 node(s) × 8 GPU(s)" in r.stderr
    write_config(cfg, tiny, max_steps=3)
    r = subprocess.run([sys.executable, "-m", "prefpilot.cli", "train", str(cfg), "--emit", "slurm"], env=ENV,
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and "use_cpu" not in r.stderr


def test_slurm_script_quotes_every_value_and_refuses_newlines(tmp_path):
    from prefpilot.errors import PrefpilotError
    from prefpilot.train.launch import slurm_script
    run_dir = str(tmp_path / "my runs" / "it's here")  # a space and a quote: one argument each, still
    script = slurm_script(str(tmp_path / "c.yaml"), run_dir, nodes=2, gpus_per_node=4, partition="gpu",
                          python="python")  # the stand-in below
    # run it with stand-ins for srun (runs its command), scontrol (a host name) and python (prints argv)
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name, body in (("srun", 'exec "$@"'), ("scontrol", "echo node-a; echo node-b"),
                       ("python", 'for a in "$@"; do printf "%s\\n" "$a"; done')):
        (bin_ / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_ / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "x"}
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    argv = out.splitlines()
    assert argv[argv.index("--run-dir") + 1] == run_dir and argv[argv.index("--machine_rank") + 1] == "1"
    assert argv[argv.index("--main_process_ip") + 1] == "node-a" and (tmp_path / "my runs" / "it's here").is_dir()
    for bad in ({"partition": "gpu\nrm -rf ~"}, {"job_name": "a b"}, {"time_limit": "1:00\n#x"}):
        with pytest.raises(PrefpilotError):
            slurm_script("c.yaml", "r", **bad)
    with pytest.raises(PrefpilotError):
        slurm_script("c.yaml", "runs\nrm -rf ~")
