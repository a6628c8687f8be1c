"""Checkpoint disk use (issue 28 item 8): the estimate against the bytes a real run writes, and the warning
when the free space where a run writes is smaller than what its checkpoints need."""
import os
import subprocess
import sys

import pytest
import yaml

from prefpilot.config.disk import checkpoint_count, estimate_disk
from prefpilot.config.validate import validate
from tiny_model import build_tiny_model

SMOL = {"method": "dpo", "model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "dataset_path": "builtin:arith-prefs"}


def test_the_reported_smollm2_case_is_about_1_6_gb_per_checkpoint():
    """The new user's run: 30 steps, save_steps 5, full weights in fp32 on a CPU (1.6 GB per checkpoint)."""
    d = estimate_disk({**SMOL, "max_steps": 30, "save_steps": 5})
    assert 1.4 < d["checkpoint_gb"] < 1.8 and d["checkpoints_written"] == 6 and d["checkpoints_kept"] == 6
    capped = estimate_disk({**SMOL, "max_steps": 30, "save_steps": 5, "save_total_limit": 2})
    assert capped["checkpoints_kept"] == 2 and capped["peak_gb"] < d["peak_gb"] / 2
    lora = estimate_disk({**SMOL, "max_steps": 30, "save_steps": 5, "use_peft": True})
    assert lora["checkpoint_gb"] < 0.1 * d["checkpoint_gb"]  # an adapter and its optimizer state only
    assert checkpoint_count({"save_strategy": "no"}) == 0 and checkpoint_count({"num_train_epochs": 1}) is None


def test_validate_warns_when_checkpoints_exceed_the_free_space(tmp_path):
    """A 7B full-weight run saving every 100 of 3000 steps needs terabytes: the warning names the folder and
    says what save_total_limit changes; a run that fits gets the figures as a note, not a warning."""
    big = {**SMOL, "model_name_or_path": "Qwen/Qwen2.5-7B", "max_steps": 3000, "save_steps": 100,
           "hardware": {"gpu_memory_gb": 80, "num_gpus": 1}}
    r = validate(big, out_dir=tmp_path)
    (w,) = [w for w in r["warnings"] if w["code"] == "disk"]
    assert str(tmp_path) in w["message"] and "save_total_limit: 2" in w["suggestion"]
    assert r["estimate"]["disk"]["checkpoint_gb"] > 40  # bf16 weights (15 GB) + AdamW state (61 GB)
    ok = validate({**SMOL, "max_steps": 30, "save_steps": 5, "save_total_limit": 1}, out_dir=tmp_path)
    assert not [w for w in ok["warnings"] if w["code"].startswith("disk")]
    assert any(n.startswith("disk: about") for n in ok["notes"])


@pytest.mark.slow
def test_the_estimate_is_within_25_percent_of_what_a_real_run_writes(tmp_path):
    tiny = build_tiny_model(tmp_path / "model")
    cfg = {"model_name_or_path": str(tiny), "dataset_path": "builtin:arith-prefs", "max_steps": 4, "save_steps": 2,
           "per_device_train_batch_size": 2, "max_length": 64, "report_to": "none", "learning_rate": 1e-3}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "prefpilot.cli", "train", str(tmp_path / "c.yaml"), "--run-dir",
                        str(tmp_path / "run")], capture_output=True, text=True, timeout=400,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    cks = sorted((tmp_path / "run" / "checkpoints").glob("checkpoint-*"))
    assert len(cks) == 2
    written = [sum(f.stat().st_size for f in ck.iterdir()) for ck in cks]
    d = estimate_disk({**cfg, "method": "dpo"})
    assert d["checkpoints_written"] == 2
    for size in written:
        assert 0.75 < d["checkpoint_bytes"] / size < 1.25, (d, written)
