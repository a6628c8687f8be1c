"""`prefpilot demo` at its full length, through the CLI as a user runs it, on the real SmolLM2-135M-Instruct:
the untrained model prefers the rejected (wrapped) answer on held-out prompts, and each method must reverse it."""
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _accuracy(out: str, key: str) -> tuple[float, float]:
    line = next(x for x in out.splitlines() if x.strip().startswith(key + " "))
    return float(line.split("before")[1].split()[0]), float(line.split("after")[1].split()[0])


@pytest.mark.parametrize("method,key,steps", [("dpo", "summed", 20), ("simpo", "per_token", 24)])
def test_demo_reverses_the_models_own_preference(tmp_path, method, key, steps):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run([sys.executable, "-m", "prefpilot.cli", "demo", "--method", method,
                        "--target", str(tmp_path / "skills"), "--runs-root", str(tmp_path / "runs")],
                       capture_output=True, text=True, timeout=900, env=env)
    out = r.stdout
    assert r.returncode == 0, (out + r.stderr)[-3000:]  # 4 would mean held-out accuracy fell
    for step in ("1. skills synced", "2. model", "3. plan", "4. config valid", "5. launched", "6. diagnosis",
                 "7. held-out preference accuracy on "):
        assert step in out, step
    before, after = _accuracy(out, key)
    print(f"{method} {key}: before {before:.3f} after {after:.3f}")
    assert before < 0.5 < 0.8 < after, out[-2500:]  # the model had to change its mind, not confirm it
    assert (tmp_path / "skills/mlops/simpo/SKILL.md").is_file()
    (run_dir,) = (tmp_path / "runs").iterdir()
    for png in ("diagnosis.png", "eval/margins.png"):
        assert (run_dir / png).read_bytes()[:4] == b"\x89PNG", png
    # step 7 is `prefpilot eval`: its report is in the run folder, with the generation checks
    import json
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    # eval's default size: a fifth of the pairs the demo trained on (its steps x batch of 4), 16 to 64
    assert report["pairs"] == max(16, min(64, steps * 4 // 5)) and round(report["preference_accuracy"][key], 3) == after
    assert f"on {report['pairs']} unseen prompts" in out
    assert set(report["generation"]) >= {"length_ratio", "cap_without_eos_rate", "repetition_rate", "empty_rate",
                                         "kl_per_token"}
    # the ~0.5 GB final model is removed after the evaluation unless --keep-model
    assert not (run_dir / "final").exists() and "removed" in out and f"completed after {steps} steps" in out
    assert f"prefpilot runs --root {tmp_path / 'runs'} status" in out  # the hint names the root it used
    if method == "dpo":
        assert _accuracy(out, "implicit")[0] == 0.5  # policy == reference before: every pair ties
    assert "None" not in out
