"""Evaluation during training (issue 23 item 3, config `eval:`): heldout/* metrics in metrics.jsonl, computed by the
code `prefpilot eval` uses, judged by the live diagnosis and by `prefpilot diagnose` afterwards. A real tiny DPO
run through the CLI; the last in-training numbers must equal `prefpilot eval` of the saved final model."""
import json
import os
import subprocess
import sys

import yaml

from prefpilot.data import builtin_files
from prefpilot.evaluation.live import live_findings, report_from_rows, with_live_findings
from prefpilot.train.data import read_rows
from tiny_model import build_tiny_model

CLI = [sys.executable, "-m", "prefpilot.cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _row(step, rep, acc=0.8):
    return {"step": step, "heldout/pairs": 32, "heldout/accuracy_summed": acc, "heldout/accuracy_per_token": acc,
            "heldout/accuracy_implicit": acc, "heldout/reference_accuracy_summed": 0.5,
            "heldout/reference_accuracy_per_token": 0.5, "heldout/length_ratio": 1.0,
            "heldout/cap_without_eos_rate": 0.0, "heldout/repetition_rate": rep, "heldout/empty_rate": 0.0,
            "heldout/mean_length": 20.0, "heldout/reference_mean_length": 20.0,
            "heldout/reference_cap_without_eos_rate": 0.0, "heldout/reference_repetition_rate": 0.0,
            "heldout/reference_empty_rate": 0.0}


def test_heldout_rows_are_judged_like_an_evaluation():
    calm = [_row(10, 0.0), _row(20, 0.0)]
    assert live_findings(calm, {"method": "dpo"}) == []
    looping = calm + [_row(30, 0.75)]
    found = {f["id"]: f for f in live_findings(looping, {"method": "dpo"})}
    assert "repetition_loops" in found and found["repetition_loops"]["source"] == "evaluation during training (step 30)"
    report = with_live_findings({"verdict": "healthy", "healthy": True, "summary": "healthy: ...", "findings": []},
                                looping, {"method": "dpo"})
    assert report["verdict"] == "problems" and report["summary"].startswith("healthy curves, unhealthy model")
    # held-out accuracy that peaked and fell while training accuracy is high: overfitting, with the step to keep
    falling = [_row(10, 0.0, 0.9), _row(20, 0.0, 0.9), _row(30, 0.0, 0.6)] + [{"step": 30, "rewards/accuracies": 1.0}]
    reg = {f["id"]: f for f in live_findings(falling, {"method": "dpo"})}["heldout_regression"]
    assert reg["evidence"]["best_checkpoint"] == "step 10"
    assert report_from_rows([{"step": 1, "loss": 0.69}], "dpo") is None


def test_a_run_with_eval_logs_heldout_metrics_that_equal_prefpilot_eval(tmp_path):
    model = build_tiny_model(tmp_path / "model")
    rows = read_rows(str(builtin_files("arith-prefs")["train"]))[:240]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"model_name_or_path": str(model), "dataset_path": str(tmp_path / "pairs.jsonl"), "max_steps": 8,
           "per_device_train_batch_size": 4, "max_length": 64, "learning_rate": 2e-3, "beta": 0.1,
           "report_to": "none", "save_strategy": "no",
           "eval": {"every_steps": 4, "pairs": 12, "prompts": 2, "max_new_tokens": 8}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    r = subprocess.run([*CLI, "train", str(tmp_path / "run.yaml"), "--run-dir", str(run)], capture_output=True,
                       text=True, timeout=600, env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    held = [m for m in metrics if "heldout/pairs" in m]
    assert [m["step"] for m in held] == [4, 8] and all(m["heldout/pairs"] == 12 for m in held)
    assert held[0]["heldout/reference_accuracy_summed"] == held[1]["heldout/reference_accuracy_summed"]
    assert {"heldout/accuracy_implicit", "heldout/repetition_rate", "heldout/length_ratio"} <= set(held[-1])
    assert (run / "eval" / "live_reference.json").is_file()
    # the same 12 pairs (the slice set aside at launch) and the same code on the saved final model
    ev = subprocess.run([*CLI, "eval", str(run), "--prompts", "2", "--json"], capture_output=True, text=True,
                        timeout=600, env=ENV)
    rep = json.loads(ev.stdout)
    assert rep["pairs"] == 12
    for key in ("summed", "per_token", "implicit"):
        # metrics.jsonl keeps 4 decimals; over 12 pairs one pair moves an accuracy by 1/24
        assert abs(rep["preference_accuracy"][key] - held[-1][f"heldout/accuracy_{key}"]) < 1e-4, key
    # the curve diagnosis reads past the heldout rows (no unknown-key noise turns into findings)
    d = subprocess.run([*CLI, "diagnose", str(run / "metrics.jsonl"), "--json"], capture_output=True, text=True,
                       timeout=120, env=ENV)
    assert d.returncode in (0, 3, 4), d.stderr
    assert not json.loads(d.stdout)["parsed"].get("rule_errors")
