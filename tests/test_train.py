"""Real DPO and SimPO runs through TRL on a tiny local model (CPU)."""
import json
import math
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from prefpilot import rundir
from prefpilot.errors import PrefpilotError
from prefpilot.train.trainer import train
from tiny_model import build_tiny_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def run(tiny, tmp_path, name="run", **cfg):
    base = {"model_name_or_path": str(tiny), "dataset_path": "builtin:arith-prefs", "max_steps": 4,
            "per_device_train_batch_size": 1, "learning_rate": 5e-3, "max_length": 64, "save_strategy": "no",
            "seed": 0}
    status = train({**base, **cfg}, tmp_path / name, progress=False)
    return status, rundir.read_metrics(tmp_path / name)


def ls(x):
    return -F.logsigmoid(torch.tensor(x, dtype=torch.float64)).item()


def sig(x):
    return torch.sigmoid(torch.tensor(x, dtype=torch.float64)).item()


BETA = 0.1
# Per-pair loss from the logged rewards (batch of one pair, so the logged means are that pair's values).
FROM_REWARDS = {
    "sigmoid": lambda rc, rr, eps: ls(rc - rr),
    "hinge": lambda rc, rr, eps: max(0.0, 1 - (rc - rr)),
    "robust": lambda rc, rr, eps: ((1 - eps) * ls(rc - rr) - eps * ls(rr - rc)) / (1 - 2 * eps),
    "apo_zero": lambda rc, rr, eps: (1 - sig(rc)) + sig(rr),
    "bco_pair": lambda rc, rr, eps: ls(rc) + ls(-rr),
}
DPO_KEYS = {"step", "epoch", "wall_time", "loss", "grad_norm", "learning_rate", "rewards/chosen", "rewards/rejected",
            "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected", "num_tokens"}


@pytest.mark.parametrize("loss_type,extra", [
    ("sigmoid", {}), ("hinge", {}), ("robust", {"label_smoothing": 0.1}), ("apo_zero", {}),
    (["sigmoid", "bco_pair"], {"loss_weights": [0.8, 0.2]}),
])
def test_dpo_loss_matches_logged_rewards(tiny, tmp_path, loss_type, extra):
    status, rows = run(tiny, tmp_path, loss_type=loss_type, beta=BETA, **extra)
    assert status["state"] == "completed" and len(rows) == 4
    assert DPO_KEYS <= set(rows[0]), DPO_KEYS - set(rows[0])
    types = loss_type if isinstance(loss_type, list) else [loss_type]
    weights = extra.get("loss_weights", [1.0] * len(types))
    eps = extra.get("label_smoothing", 0.0)
    assert rows[0]["rewards/margins"] == 0.0  # step 1: policy == reference
    for r in rows:
        ours = sum(w * FROM_REWARDS[t](r["rewards/chosen"], r["rewards/rejected"], eps) for t, w in zip(types, weights))
        assert math.isclose(r["loss"], ours, rel_tol=1e-4, abs_tol=1e-5), (r["step"], r["loss"], ours)
    assert any(r["rewards/margins"] != 0 for r in rows[1:])  # it trained
    assert (tmp_path / "run/final/model.safetensors").is_file()
    assert (tmp_path / "run/config.yaml").is_file() and rundir.read_status(tmp_path / "run")["percent"] == 100.0


def test_ipo_step_one_is_target_squared(tiny, tmp_path):
    _, rows = run(tiny, tmp_path, loss_type="ipo", beta=BETA, max_steps=1)
    assert math.isclose(rows[0]["loss"], (1 / (2 * BETA)) ** 2, rel_tol=1e-5)


@pytest.mark.parametrize("loss", ["sigmoid", "hinge"])
def test_simpo_loss_matches_logged_rewards(tiny, tmp_path, loss):
    beta, ratio = 2.0, 0.5
    status, rows = run(tiny, tmp_path, method="simpo", loss_type=loss, beta=beta, gamma_beta_ratio=ratio)
    gamma = beta * ratio
    assert status["state"] == "completed"
    assert {"rewards/margins", "logps/chosen", "nll_loss"} <= set(rows[0])
    for r in rows:
        m = r["rewards/chosen"] - r["rewards/rejected"]
        assert math.isclose(r["rewards/chosen"], beta * r["logps/chosen"], rel_tol=1e-5)  # reward = β·avg logp
        ours = ls(m - gamma) if loss == "sigmoid" else max(0.0, 1 - (m - gamma))
        assert math.isclose(r["loss"], ours, rel_tol=1e-4), (r, ours)
        assert r["nll_loss"] == 0.0  # pure SimPO: cpo_alpha = 0


def test_lora_run_saves_adapter_and_uses_base_as_reference(tiny, tmp_path):
    status, rows = run(tiny, tmp_path, use_peft=True, lora_r=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"],
                       learning_rate=5e-2, beta=BETA)
    assert status["state"] == "completed"
    assert (tmp_path / "run/final/adapter_config.json").is_file()
    assert rows[0]["rewards/margins"] == 0.0 and any(r["rewards/margins"] != 0 for r in rows[1:])
    for r in rows:
        assert math.isclose(r["loss"], ls(r["rewards/chosen"] - r["rewards/rejected"]), rel_tol=1e-4)


def test_nan_loss_stops_the_run_as_failed(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    bad = tmp_path / "nan-model"
    m = AutoModelForCausalLM.from_pretrained(tiny)
    with torch.no_grad():
        m.model.norm.weight.fill_(float("nan"))
    m.save_pretrained(bad)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(bad)
    with pytest.raises(PrefpilotError, match="step 1"):
        run(bad.parent, tmp_path, model_name_or_path=str(bad), max_steps=5)
    st = rundir.read_status(tmp_path / "run")
    assert st["state"] == "failed" and st["failed_step"] == 1 and "Non-finite" in st["error"]
    assert st["stopped_by"]["id"] == "nan_loss"
    assert rundir.read_metrics(tmp_path / "run")[0]["loss"] == "nan"


def test_live_diagnosis_stops_a_run_that_goes_nan_with_a_checkpoint(tiny, tmp_path):
    from transformers import TrainerCallback

    class Poison(TrainerCallback):  # the weights turn NaN after step 3: the next forward pass is NaN
        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step == 3:
                with torch.no_grad():
                    model.model.norm.weight.fill_(float("nan"))

    base = {"method": "dpo", "model_name_or_path": str(tiny), "dataset_path": "builtin:arith-prefs",
            "per_device_train_batch_size": 2, "max_steps": 12, "logging_steps": 1, "max_length": 64,
            "save_strategy": "no"}
    with pytest.raises(PrefpilotError, match="live diagnosis at step 4"):
        train(base, tmp_path / "run", progress=False, callbacks=[Poison()])
    st = rundir.read_status(tmp_path / "run")
    assert st["state"] == "failed" and st["stopped_by"]["id"] in ("nan_loss", "nonfinite_metrics")
    assert st["stopped_by"]["step"] == 4 and st["error"].startswith("stopped by the live diagnosis")
    assert st["checkpoint"].endswith("checkpoint-4")  # saved at the stop although save_strategy is "no"
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-4" / "trainer_state.json").is_file()
    assert [f["id"] for f in st["findings"]][0] in ("nan_loss", "nonfinite_metrics")
    assert len(rundir.read_metrics(tmp_path / "run")) == 4  # nothing trained past the stop


def test_bad_rows_are_reported_before_any_model_load(tmp_path):
    data = tmp_path / "prefs.jsonl"
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 5 + [
        {"prompt": "p", "chosen": "same", "rejected": "same"}, {"prompt": "p", "chosen": ""},
        {"prompt": "p", "chosen": 3, "rejected": "x"}, {"prompt": "q", "chosen": "a", "rejected": "b"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"model_name_or_path": "prefpilot-tests/no-such-model", "dataset_path": str(data), "max_steps": 1}
    with pytest.raises(PrefpilotError) as e:
        train(cfg, tmp_path / "run", progress=False)
    msg = str(e.value)
    assert "3 of 9 rows" in msg and "row 6: chosen == rejected" in msg and "row 7" in msg and "row 8" in msg
    assert "--max-bad-rows 3" in msg
    assert rundir.read_status(tmp_path / "run")["state"] == "failed"


def test_max_bad_rows_drops_them(tiny, tmp_path):
    data = tmp_path / "prefs.jsonl"
    good = [{"prompt": f"What is {i} + 1?", "chosen": str(i + 1), "rejected": str(i + 2)} for i in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in good + [{"prompt": "x", "chosen": "y", "rejected": "y"}]))
    status = train({"model_name_or_path": str(tiny), "dataset_path": str(data), "max_steps": 2,
                    "per_device_train_batch_size": 2, "save_strategy": "no"}, tmp_path / "run", max_bad_rows=1,
                   progress=False)
    assert status["state"] == "completed" and status["data"]["dropped"] == 1


def test_simpo_prompts_that_fill_max_length_are_caught_before_training(tiny, tmp_path):
    # TRL's CPO trainer cuts the completion, never the prompt: such a row would give 0/0 = NaN at its first batch.
    data = tmp_path / "prefs.jsonl"
    good = [{"prompt": f"What is {i} + 1?", "chosen": str(i + 1), "rejected": str(i + 2)} for i in range(8)]
    long = [{"prompt": "count " * 80 + str(i), "chosen": "yes", "rejected": "no"} for i in range(2)]
    data.write_text("".join(json.dumps(r) + "\n" for r in good[:3] + long + good[3:]))
    cfg = {"model_name_or_path": str(tiny), "dataset_path": str(data), "max_steps": 3, "method": "simpo",
           "per_device_train_batch_size": 2, "max_length": 32, "save_strategy": "no", "learning_rate": 1e-3}
    with pytest.raises(PrefpilotError) as e:
        train(cfg, tmp_path / "run", progress=False)
    msg = str(e.value)
    assert "2 of 10 prompts fill max_length=32" in msg and "row 4" in msg and "row 5" in msg
    assert "--max-bad-rows 2" in msg and e.value.path == "/max_length"
    assert rundir.read_status(tmp_path / "run")["state"] == "failed"
    status = train(cfg, tmp_path / "run2", max_bad_rows=2, progress=False)
    assert status["state"] == "completed"
    assert all(math.isfinite(m["loss"]) for m in rundir.read_metrics(tmp_path / "run2"))


def test_conversational_and_implicit_prompt_formats(tiny, tmp_path):
    conv = tmp_path / "conv.json"
    conv.write_text(json.dumps([{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}],
                                 "chosen": [{"role": "assistant", "content": str(2 * i)}],
                                 "rejected": [{"role": "assistant", "content": str(2 * i + 1)}]} for i in range(6)]))
    implicit = tmp_path / "implicit.csv"
    implicit.write_text("chosen,rejected\n" + "".join(f"Q{i} A{i},Q{i} B{i}\n" for i in range(6)))
    import pyarrow as pa
    import pyarrow.parquet as pq
    parquet = tmp_path / "std.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": f"{i} + 2 =", "chosen": str(i + 2), "rejected": str(i + 3)}
                                         for i in range(6)]), parquet)
    for name, path in (("conv", conv), ("implicit", implicit), ("parquet", parquet)):
        status = train({"model_name_or_path": str(tiny), "dataset_path": str(path), "max_steps": 2,
                        "per_device_train_batch_size": 2, "save_strategy": "no"}, tmp_path / name, progress=False)
        assert status["state"] == "completed", name


def test_invalid_config_never_loads_a_model(tmp_path):
    with pytest.raises(PrefpilotError, match="nothing was loaded"):
        train({"model_name_or_path": str(tmp_path / "absent"), "dataset_path": "builtin:arith-prefs", "beta": -1},
              tmp_path / "run")
    assert "beta" in rundir.read_status(tmp_path / "run")["error"]


def test_hardware_defaults_on_cpu(tiny, tmp_path):
    status, _ = run(tiny, tmp_path, max_steps=1)
    choices = " ".join(status["hardware_choices"])
    assert "fp32" in choices and "activation checkpointing off" in choices
    import yaml
    cfg = yaml.safe_load((tmp_path / "run/config.yaml").read_text())
    assert cfg["bf16"] is False and cfg["activation_checkpointing"] is False


def test_a_spent_lease_stops_the_run_with_a_checkpoint(tiny, tmp_path):
    # an unattended run gets max_wall_time seconds of training, then checkpoints and ends cancelled
    t0 = time.time()
    status, rows = run(tiny, tmp_path, max_steps=100000, max_wall_time=2)
    assert time.time() - t0 < 120 and status["state"] == "cancelled" and "max_wall_time" in status["error"]
    assert status["checkpoint"] and (Path(status["checkpoint"]) / "trainer_state.json").is_file()
    assert 0 < status["step"] < 100000 and rows[-1]["step"] <= status["step"]


def test_rows_with_the_wrong_columns_fail_validate_and_never_start(tmp_path):
    """A JSONL with other columns: validate says why (with the columns it has); --max-bad-rows cannot start a run
    with nothing to train on (it used to die in TRL with StopIteration)."""
    import subprocess
    import sys
    data = tmp_path / "wrong.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i}+1?", "good": str(i + 1), "bad": str(i)}) + "\n"
                            for i in range(3)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model_name_or_path: HuggingFaceTB/SmolLM2-135M-Instruct\ndataset_path: {data}\n")
    for argv in (["validate", str(cfg)], ["train", str(cfg), "--max-bad-rows", "3", "--run-dir", str(tmp_path / "r")]):
        r = subprocess.run([sys.executable, "-m", "prefpilot.cli", *argv], capture_output=True, text=True)
        out = r.stdout + r.stderr
        assert r.returncode == 1 and "none of the 3 rows is usable" in out and "bad, good, question" in out, out
        assert "Traceback" not in out and not (tmp_path / "r").exists()
    from prefpilot.train.data import check_rows
    with pytest.raises(PrefpilotError, match="nothing to train on"):
        check_rows([{"question": "x"}], "rows", max_bad_rows=5)


def test_resuming_a_completed_run_with_nothing_left_keeps_it_as_it_was(tiny, tmp_path, capsys):
    # what a Slurm job requeued after its run finished does (--resume on restart): nothing may be trained over
    cfg = {"model_name_or_path": str(tiny), "dataset_path": "builtin:arith-prefs", "max_steps": 3,
           "per_device_train_batch_size": 1, "learning_rate": 5e-3, "max_length": 64, "save_strategy": "no", "seed": 0}
    done = train(cfg, tmp_path / "r", progress=False)
    weights = {f: f.stat().st_mtime_ns for f in (tmp_path / "r" / "final").iterdir()}
    again = train(cfg, tmp_path / "r", resume=True, progress=False)
    assert again == done and "already completed at step 3" in capsys.readouterr().err
    assert {f: f.stat().st_mtime_ns for f in (tmp_path / "r" / "final").iterdir()} == weights
    assert len(rundir.read_metrics(tmp_path / "r")) == 3
