"""Diagnosis from what people paste: one-line signatures, methods other than DPO/SimPO, remedies that start
from the run's own values, and the log formats people have (notebook and model-card tables, LLaMA-Factory,
TensorBoard, step-prefixed and tqdm-interleaved console output)."""
import json
import math

import pytest

import histories as H
from prefpilot import diagnose
from prefpilot.cli import main as cli
from prefpilot.diagnosis.parse import load_history


def row(**kw):
    base = {"loss": 0.6931, "grad_norm": 3.2, "learning_rate": 5e-7, "rewards/chosen": 0.012,
            "rewards/rejected": -0.02, "rewards/accuracies": 0.5, "rewards/margins": 0.032, "logps/chosen": -210.4,
            "logps/rejected": -230.9, "logits/chosen": -2.7, "logits/rejected": -2.6, "epoch": 0.05}
    base.update(kw)
    return repr(base)


def ids(report, levels=("error", "warning")):
    return {f["id"] for f in report["findings"] if f["severity"] in levels}


# ----------------------------------------------------------------------------- one pasted line is enough
@pytest.mark.parametrize("line,fid", [
    (row(**{"rewards/chosen": 0.0, "rewards/rejected": 0.0, "rewards/margins": 0.0}), "reference_tracks_policy"),
    (row(grad_norm=0.0), "no_gradient"),
    (row(**{"logps/chosen": 0.0, "logps/rejected": 0.0, "rewards/chosen": 0.0, "rewards/rejected": 0.0,
            "rewards/margins": 0.0}), "empty_completions"),
    (row(**{"logits/chosen": float("nan")}), "nonfinite_metrics"),
    (row(entropy=float("nan")), "nonfinite_metrics"),
    (row(grad_norm=float("nan"), loss=0.0), "nonfinite_metrics"),
    (row(loss=float("nan")), "nan_loss"),
    (row(learning_rate=3e-4), "lr_out_of_range"),
    (row(**{"rewards/margins": 7.0, "rewards/chosen": 3.0, "rewards/rejected": -4.0}, epoch=0.01),
     "reference_mismatch"),
])
def test_one_pasted_line_gives_the_right_finding(line, fid):
    report = diagnose(line)
    assert fid in ids(report), report["summary"]
    assert report["verdict"] == "problems" and not report["healthy"]


def test_masked_nan_loss_is_named():
    f = next(f for f in diagnose(row(grad_norm=float("nan"), loss=0.0))["findings"] if f["id"] == "nonfinite_metrics")
    assert f["evidence"]["masked_loss_steps"] and "logging_nan_inf_filter" in f["explanation"]


def test_zero_rewards_at_the_first_step_are_normal():
    # TRL's first logged step (logging_steps 1): the policy still is the reference, so rewards are exactly 0
    rows = [{"step": 1, "loss": 0.6931, "rewards/chosen": 0.0, "rewards/rejected": 0.0, "rewards/margins": 0.0,
             "rewards/accuracies": 0.0, "logps/chosen": -250.0, "logps/rejected": -260.0, "grad_norm": 4.0}]
    report = diagnose(rows)
    assert "reference_tracks_policy" not in ids(report) and report["verdict"] == "inconclusive"
    # the same zeros at step 40 are the signature, and certain (error)
    rows[0]["step"] = 40
    f = {f["id"]: f for f in diagnose(rows)["findings"]}["reference_tracks_policy"]
    assert f["severity"] == "error"


def test_zero_rewards_after_a_warm_up_step_at_learning_rate_0_are_normal():
    # a real `prefpilot demo --steps 2` run: warm-up gives step 1 a learning rate of exactly 0, so the weights
    # step 2 is scored with are still the reference's and its rewards are exactly 0 too
    zero = {"loss": 0.6931471824645996, "rewards/chosen": 0.0, "rewards/rejected": 0.0, "rewards/margins": 0.0,
            "rewards/accuracies": 0.0}
    rows = [{"step": 1, "learning_rate": 0.0, "grad_norm": 0.981, "logps/chosen": -23.3, "logps/rejected": -24.3, **zero},
            {"step": 2, "learning_rate": 5e-06, "grad_norm": 0.930, "logps/chosen": -24.0, "logps/rejected": -24.0,
             **zero}]
    assert "reference_tracks_policy" not in ids(diagnose(rows, config={"method": "dpo"}))
    # zeros after an update at a non-zero rate are still the signature
    rows.append({**rows[1], "step": 3})
    assert "reference_tracks_policy" in ids(diagnose(rows, config={"method": "dpo"}))


def test_zero_grad_with_moving_rewards_is_a_warning_and_without_them_an_error():
    moving = diagnose(row(grad_norm=0.0))
    assert {f["id"]: f for f in moving["findings"]}["no_gradient"]["severity"] == "warning"
    frozen = diagnose([{"step": s, "loss": 0.6931, "grad_norm": 0.0, "rewards/chosen": 0.0, "rewards/rejected": 0.0,
                        "logps/chosen": -20.0 - s, "logps/rejected": -55.0, "learning_rate": 4.5e-5}
                       for s in range(1, 8)])
    fs = {f["id"]: f for f in frozen["findings"]}
    assert fs["no_gradient"]["severity"] == "error"
    assert "reference_tracks_policy" not in fs and "no_learning" not in fs  # the cause, not its symptoms
    assert all("learning_rate" not in r["change"] for r in fs["no_gradient"]["remedies"])


def test_instant_saturation_from_the_first_points():
    rows = [{"step": s, "loss": 0.004, "rewards/accuracies": 1.0, "rewards/margins": 5.0 + s,
             "rewards/chosen": 1.0, "rewards/rejected": -4.0 - s, "grad_norm": 0.1} for s in range(2, 5)]
    assert "instant_saturation" in ids(diagnose(rows))
    for r in rows:
        r["step"] += 500  # the same values late in a run are not "from the start"
    assert "instant_saturation" not in ids(diagnose(rows))


# ----------------------------------------------------------------------------- remedies from the run itself
def test_learning_rate_remedies_start_from_the_logged_rate():
    rows = H.flat()
    for r in rows:
        if "loss" in r:
            r["learning_rate"] = 4.5e-5
    f = {f["id"]: f for f in diagnose(rows)["findings"]}["no_learning"]
    rem = f["remedies"][0]
    assert rem["change"]["learning_rate"] == pytest.approx(2.25e-4, rel=0.05)  # ×5 from 4.5e-5, not TRL's 1e-6
    assert rem["from"]["learning_rate"] == {"value": 4.5e-5, "source": "logged learning_rate (peak)"}
    report = diagnose(H.flat(), config={"method": "dpo", "learning_rate": 2e-7})
    assert report["assumed"]["learning_rate"]["source"] == "config"


def test_without_config_or_log_the_assumed_default_is_said():
    rows = [{k: v for k, v in r.items() if k != "learning_rate"} for r in H.flat()]
    report = diagnose(rows)
    assert "assumed" in report["assumed"]["learning_rate"]["source"]
    assert "assumed" in report["assumed"]["beta"]["source"]


# ----------------------------------------------------------------------------- calibration
def test_margin_explosion_scales_with_beta():
    rows = H.exploding(top=8)  # margin 8 at the end: 80 nats at β 0.1 (fine), 800 at β 0.01 (runaway)
    assert "margin_explosion" not in ids(diagnose(rows, config={"method": "dpo", "beta": 0.1}))
    assert "margin_explosion" in ids(diagnose(H.exploding(top=8), config={"method": "dpo", "beta": 0.01}))


def test_zephyr_like_displacement_is_info_and_near_equal_falls_warn():
    # chosen 95 nats below the reference, rejected 190 (chosen falling at half the rate): the usual DPO regime
    zephyr = H.displaced(drop=95, rejected_factor=2.0, beta=0.01)
    f = {f["id"]: f for f in diagnose(zephyr, config={"method": "dpo", "beta": 0.01})["findings"]}
    assert f["likelihood_displacement"]["severity"] == "info"
    near = H.displaced(drop=95, rejected_factor=1.2, beta=0.01)
    assert "likelihood_displacement" in ids(diagnose(near, config={"method": "dpo", "beta": 0.01}))


def test_simpo_short_margin_is_info_while_the_loss_falls():
    cfg = {"method": "simpo", "beta": 2.5, "simpo_gamma": 1.4}
    falling = diagnose(H.simpo_short(top=0.66, flat_loss=False), config=cfg)
    f = {f["id"]: f for f in falling["findings"]}["simpo_margin_below_target"]
    assert f["severity"] == "info" and falling["healthy"]
    assert "simpo_margin_below_target" in ids(diagnose(H.simpo_short(top=0.66), config=cfg))


# ----------------------------------------------------------------------------- methods
def test_orpo_and_kto_logs_get_only_their_rules():
    orpo = [{"step": s, "loss": 1.0 - 0.01 * s, "nll_loss": 0.9, "log_odds_ratio": -0.7, "log_odds_chosen": 0.2,
             "rewards/margins": 0.0, "rewards/chosen": -0.06, "rewards/rejected": -0.06, "rewards/accuracies": 0.5,
             "logps/chosen": -1.2, "logps/rejected": -1.2} for s in range(1, 30)]
    r = diagnose(orpo)
    assert r["method"] == "orpo" and "simpo_margin_below_target" not in r["rules_run"]
    assert "reference_tracks_policy" not in r["rules_run"] and "chance_accuracy" in r["rules_run"]
    kto = [{"step": s, "loss": 0.5, "kl": 0.1, "rewards/chosen": 0.0, "rewards/rejected": 0.0,
            "logps/chosen": -30.0 - s} for s in range(1, 4)]
    r = diagnose(kto)
    assert r["method"] == "kto" and "reference_tracks_policy" not in ids(r)


def test_simpo_and_cpo_told_apart_by_log_prob_scale():
    simpo = [{"step": s, "loss": 1.3, "nll_loss": 0.0, "logps/chosen": -1.1, "logps/rejected": -1.4,
              "rewards/margins": 0.6} for s in range(1, 4)]
    assert diagnose(simpo)["method"] == "simpo"
    cpo = [{**r, "logps/chosen": -180.0 - s, "logps/rejected": -220.0, "rewards/chosen": 0.1 * (-180.0 - s)}
           for s, r in enumerate(simpo)]
    assert diagnose(cpo)["method"] == "cpo"  # rewards = β × summed log-probs: reference-free, summed
    # nll_loss with summed log-probs and nothing else is also DPO with an SFT term (rpo_alpha, ms-swift): unknown
    ambiguous = [{k: v for k, v in r.items() if k != "rewards/chosen"} for r in cpo]
    assert diagnose(ambiguous)["method"] == "unknown"
    dpo_sft = [{**r, "rewards/chosen": 0.1 * s} for s, r in enumerate(ambiguous)]  # rewards move by themselves
    assert diagnose(dpo_sft)["method"] == "dpo"


# ----------------------------------------------------------------------------- formats
NOTEBOOK = """Step\tTraining Loss\tValidation Loss\tRewards / chosen\tRewards / rejected\tRewards / accuracies\tRewards / margins
100\t0.661200\t0.664000\t0.046400\t-0.034900\t0.656500\t0.081300
200\t0.592400\t0.606800\t0.077800\t-0.252500\t0.692700\t0.330200
300\tNo log\t0.577200\t0.168800\t-0.484400\t0.710000\t0.653200
"""


def test_notebook_table_tab_or_space_separated():
    for text in (NOTEBOOK, NOTEBOOK.replace("\t", "   ")):
        h = load_history(text)
        assert h.info["format"] == "notebook table"
        assert [r["step"] for r in h.eval] == [100, 200, 300] and h.eval[2]["rewards/margins"] == 0.6532
        assert [r["loss"] for r in h.train] == [0.6612, 0.5924]  # "No log" is missing, not 0


def test_llama_factory_trainer_log(tmp_path):
    lines = [{"current_steps": s, "total_steps": 100, "loss": 0.69 - 0.002 * s, "eval_loss": None,
              "accuracy": 0.5 + 0.003 * s, "lr": 5e-7, "epoch": s / 100, "percentage": s,
              "elapsed_time": "0:01:00", "remaining_time": "0:09:00"} for s in range(10, 101, 10)]
    (tmp_path / "trainer_log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    h = load_history(tmp_path)  # a LLaMA-Factory output dir
    assert [r["step"] for r in h.train][:2] == [10, 20] and h.train[0]["rewards/accuracies"] == 0.53
    assert h.train[0]["learning_rate"] == 5e-7 and not h.info["unrecognised_keys"]


def test_step_prefixed_and_tqdm_interleaved_console():
    text = ("15 {'loss': 0.69, 'rewards/margins': 0.01}\n"
            "step 30: {'loss': 0.68, 'rewards/margins': 0.02}\n"
            "  9%|▉         | 45/500 [01:30<15:10,  2.00s/it]{'loss': 0.66, 'rewards/margins': 0.05}\r"
            " 10%|█         | 50/500 [01:40<15:00,  2.00s/it]\n")
    h = load_history(text)
    assert [r["step"] for r in h.train] == [15, 30, 45] and not h.info.get("steps_inferred")


def test_tensorboard_event_files(tmp_path):
    pytest.importorskip("tensorboard", reason="the optional tensorboard extra is not installed")
    from torch.utils.tensorboard import SummaryWriter
    w = SummaryWriter(str(tmp_path / "runs" / "exp1"))
    for s in range(1, 13):
        w.add_scalar("train/loss", float("nan") if s >= 10 else 0.69 - 0.01 * s, s)
        w.add_scalar("train/rewards/margins", 0.05 * s, s)
        w.add_scalar("train/grad_norm", 2.0, s)
    w.add_scalar("eval/loss", 0.6, 12)
    w.close()
    h = load_history(tmp_path)
    assert h.info["format"] == "tensorboard" and len(h.train) == 12 and len(h.eval) == 1
    assert math.isnan(h.train[-1]["loss"])
    assert "nan_loss" in ids(diagnose(h))


def test_not_a_log_is_one_line_and_exit_2(tmp_path, capsys):
    blob = tmp_path / "model.safetensors"
    blob.write_bytes(b"\x00\x01binary" * 100)
    assert cli(["diagnose", str(blob)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "binary" in err and "Traceback" not in err
    text = tmp_path / "notes.txt"
    text.write_text("this is my shopping list\napples\n")
    assert cli(["diagnose", str(text)]) == 2
    assert "no preference metrics" in capsys.readouterr().err
