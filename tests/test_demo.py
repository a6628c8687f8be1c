"""`prefpilot demo`, shortened: the whole loop on the real SmolLM2-135M-Instruct, through the CLI as a user runs it."""
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_short_run_end_to_end(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    import os
    r = subprocess.run([sys.executable, "-m", "prefpilot.cli", "demo", "--steps", "6", "--eval-pairs", "12",
                        "--target", str(tmp_path / "skills"), "--runs-root", str(tmp_path / "runs")],
                       capture_output=True, text=True, timeout=900, env={**os.environ, **env})
    out = r.stdout
    assert r.returncode == 0, (out + r.stderr)[-3000:]  # 4 would mean held-out accuracy fell
    for step in ("1. skills synced", "2. model", "3. plan", "4. config valid", "5. launched", "6. diagnosis",
                 "7. held-out preference accuracy"):
        assert step in out, step
    assert (tmp_path / "skills/mlops/simpo/SKILL.md").is_file()
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "diagnosis.png").read_bytes()[:4] == b"\x89PNG"
    # the ~0.5 GB final model is removed after the evaluation unless --keep-model
    assert not (run_dir / "final").exists() and "removed" in out and "completed after 6 steps" in out
    assert f"prefpilot runs --root {tmp_path / 'runs'} status" in out  # the hint names the root it used
    line = next(x for x in out.splitlines() if "implicit_reward_accuracy" in x)
    before, after = float(line.split("before")[1].split()[0]), float(line.split("after")[1].split()[0])
    assert before == 0.5 and after >= before
