"""Diagnosis v3: the block reader (any container, the best block wins), method detection that says
"unknown" instead of guessing, and each method judged on its own scale.

The real files of each format are in tests/real_logs (test_real_logs.py); these tests pin the behaviour
of each piece on small inputs written to show one thing each.
"""
import json
from pathlib import Path

import pytest

from prefpilot.cli import main as cli
from prefpilot.diagnosis import diagnose, diagnose_source
from prefpilot.diagnosis.parse import canonical, load_history
from prefpilot.errors import PrefpilotError


def ids(report, severities=("error", "warning")):
    return {f["id"] for f in report["findings"] if f["severity"] in severities}


def notebook(cells):
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": cells}


def code(src, outputs=()):
    return {"cell_type": "code", "source": src, "outputs": list(outputs), "metadata": {}, "execution_count": 1}


def html_table(head, rows):
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return (f'<div><progress value="30" max="30"></progress> [30/30 01:00, Epoch 1/1]</div>'
            f'<table border="1" class="dataframe"><thead><tr style="text-align: left;">{th}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


# ----------------------------------------------------------------------------- one alias table
@pytest.mark.parametrize("name,want", [
    ("rewards / chosen", ("train", "rewards/chosen")), ("Rewards/Margin", ("train", "rewards/margins")),
    ("Train Loss", ("train", "loss")), ("train/rewards/margins", ("train", "rewards/margins")),
    ("eval/rewards/accuracies", ("eval", "rewards/accuracies")), ("Validation Loss", ("eval", "loss")),
    ("rewards_train/chosen", ("train", "rewards/chosen")), ("loss/eval", ("eval", "loss")),
    ("my-run - train/loss", ("train", "loss")), ("my-run - train/loss__MIN", ("train", None)),
    ("Chosen reward", ("train", "rewards/chosen")), ("reject_reward", ("train", "rewards/rejected")),
    ("acc_mean", ("train", "rewards/accuracies")), ("global_step/max_steps", ("train", "step")),
])
def test_one_alias_table(name, want):
    assert canonical(name) == want


# ----------------------------------------------------------------------------- containers
def test_notebook_html_training_table_is_training_rows_and_its_code_names_the_method():
    head = ["Step", "Training Loss", "rewards / chosen", "rewards / rejected", "rewards / accuracies",
            "rewards / margins", "log_odds_ratio"]
    rows = [[s, f"{1.5 - 0.01 * s:.4f}", "-0.12", f"{-0.12 - 0.002 * s:.4f}", "0.6", f"{0.002 * s:.4f}", "-0.6"]
            for s in range(1, 31)]
    nb = notebook([code("from trl import ORPOConfig, ORPOTrainer\ntrainer = ORPOTrainer(model=m, args=ORPOConfig("
                        "beta=0.1, learning_rate=8e-6))"),
                   code("trainer.train()", [{"output_type": "display_data", "metadata": {},
                                              "data": {"text/html": html_table(head, rows),
                                                       "text/plain": "<IPython.core.display.HTML object>"}}])])
    h = load_history(json.dumps(nb))
    assert h.info["format"] == "notebook HTML table" and "cell 2" in h.info["block"]
    assert len(h.train) == 30 and not h.eval  # no Validation Loss column: the columns are training metrics
    r = diagnose(h)
    assert r["method"] == "orpo" and r["assumed"]["learning_rate"]["value"] == 8e-6
    assert "eval_divergence" not in ids(r)


def test_notebook_stream_dicts_and_an_eval_cell_are_merged():
    log = "".join(f"{{'loss': {0.69 - 0.005 * s:.4f}, 'grad_norm': 3.1, 'learning_rate': 5e-07, 'rewards/chosen': "
                  f"{0.01 * s:.3f}, 'rewards/rejected': {-0.01 * s:.3f}, 'rewards/accuracies': {0.5 + 0.01 * s:.2f}, "
                  f"'rewards/margins': {0.02 * s:.3f}, 'logps/chosen': -120.0, 'logps/rejected': -130.0, "
                  f"'epoch': {s / 30:.2f}}}\n\r 10%|█         | {s}/30 [00:10<01:30,  1.2it/s]" for s in range(1, 31))
    nb = notebook([code("trainer = DPOTrainer(model, args=DPOConfig(beta=0.1))\ntrainer.train()",
                        [{"output_type": "stream", "name": "stderr", "text": log}]),
                   code("trainer.evaluate()", [{"output_type": "execute_result", "metadata": {}, "execution_count": 2,
                                                "data": {"text/plain": "{'eval_loss': 0.52, 'eval_rewards/margins': "
                                                                       "0.61, 'eval_rewards/accuracies': 0.76, "
                                                                       "'epoch': 1.0}"}}])])
    r = diagnose_source(json.dumps(nb), is_path=False)
    assert r["parsed"]["rows"] == 30 and r["parsed"]["eval_rows"] == 1
    assert r["method"] == "dpo" and r["method_source"].startswith("the notebook's code")
    assert r["verdict"] == "healthy"  # loss falls, accuracy rises: no error, no warning


def test_card_whose_training_table_is_not_the_first():
    card = ("---\ntags:\n- trl\n- dpo\n---\n# model\n\n| Model | MT-Bench | AlpacaEval |\n|---|---|---|\n| ours | 7.3 | 90 |"
            "\n\nIt achieves the following results on the evaluation set:\n- Loss: 0.50\n- Rewards/margin: 0.9\n\n"
            "## Training results\n\n| Train Loss | Epoch | Step | Validation Loss | Rewards/Chosen | Rewards/Rejected "
            "| Rewards/Accuracies | Rewards/Margin |\n|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|\n"
            + "".join(f"| {0.69 - 0.02 * i:.3f} | {i / 10:.1f} | {100 * i} | {0.68 - 0.02 * i:.3f} | {0.05 * i:.2f} | "
                      f"{-0.05 * i:.2f} | {0.55 + 0.03 * i:.2f} | {0.1 * i:.2f} |\n" for i in range(1, 9)))
    h = load_history(card)
    assert "under '## Training results'" in h.info["block"] and len(h.eval) >= 8
    assert any("MT-Bench" in s or "mt-bench" in s for s in h.info["skipped_blocks"])


def test_mlx_iter_lines():
    text = "\n".join([f"Iter {i}: Train loss {0.693 - 0.01 * i:.3f}, Chosen reward {0.02 * i:.3f}, Rejected reward "
                      f"{-0.02 * i:.3f}, Accuracy {0.5 + 0.02 * i:.3f}, Margin {0.04 * i:.3f}, Learning Rate 1.000e-06, "
                      f"It/sec 0.5, Tokens/sec 200, Trained Tokens {100 * i}, Peak mem 3.1 GB" for i in range(1, 11)]
                     + ["Iter 10: Val loss 0.600, Val chosen reward 0.2, Val rejected reward -0.2, Val accuracy 0.7, "
                        "Val took 2.1s"])
    h = load_history(text)
    assert len(h.train) == 10 and h.train[3]["step"] == 4 and h.train[3]["rewards/chosen"] == 0.08
    assert h.eval[0]["loss"] == 0.6 and h.eval[0]["rewards/accuracies"] == 0.7


def test_wandb_summary_lines_and_csv_export():
    summary = ("wandb: Run history:\nwandb:        train/loss █▆▅▃▁\nwandb: Run summary:\nwandb:      train/epoch 1.0\n"
               "wandb:  train/grad_norm 0.0\nwandb:       train/loss 0.0\nwandb:         train/kl 0.0\n"
               "wandb: Synced 5 W&B file(s)")
    h = load_history(summary)
    assert h.info["format"] == "summary lines (name value)" and h.train[0]["grad_norm"] == 0.0
    # a wandb-summary.json: the run's last values, with train_runtime beside them (not transformers' end summary)
    wsum = {"train/loss": 1.2, "train/rewards/margins": 0.3, "eval/loss": 1.3, "train_runtime": 2658.9,
            "train_loss": 1.5, "_wandb": {"runtime": 2672}, "_step": 128}
    h = load_history(json.dumps(wsum))
    assert h.train[0]["rewards/margins"] == 0.3 and h.eval[0]["loss"] == 1.3
    end = {"train_runtime": 2658.9, "train_samples_per_second": 0.75, "train_loss": 1.5, "epoch": 2.0}
    with pytest.raises(PrefpilotError):  # transformers' own end-of-training line alone is no log
        load_history([end])
    csv = ('Step,"run-a - train/loss","run-a - train/loss__MIN","run-a - train/loss__MAX","run-a - train/rewards/margins"\n'
           + "".join(f'{s},{0.69 - 0.001 * s},0.6,0.7,{0.01 * s}\n' for s in range(1, 60)))
    h = load_history(csv)
    assert len(h.train) == 59 and set(h.train[0]) == {"step", "loss", "rewards/margins"}


def test_dpo_repo_stats_openrlhf_postfix_and_swift_steps():
    repo = "\n".join(f"train stats after {64 * i} examples: {{'rewards_train/chosen': '{0.01 * i}', "
                     f"'rewards_train/rejected': '{-0.01 * i}', 'rewards_train/accuracies': '0.6', 'loss/train': "
                     f"'{0.69 - 0.01 * i}', 'grad_norm': '3.0'}}" for i in range(1, 8))
    h = load_history(repo)
    assert [r["step"] for r in h.train][:2] == [64, 128] and h.train[0]["loss"] == pytest.approx(0.68)
    orl = "\n".join(f"Train epoch [1/1]:  {i}%|█ | {i}/100 [00:{i:02d}<01:00, 1.6it/s, preference_loss={0.69 - 0.01 * i:.3f}, "
                    f"chosen_reward={0.01 * i:.2f}, reject_reward={-0.01 * i:.2f}, acc_mean=0.6, lr=5e-07]"
                    for i in range(1, 9))
    h = load_history(orl)
    assert [r["step"] for r in h.train][:3] == [1, 2, 3] and h.train[1]["rewards/rejected"] == -0.02
    swift = "{'loss': 0.66, 'rewards/chosen': 0.1, 'rewards/margins': 0.9, 'nll_loss': 1.0, 'global_step/max_steps': '12/1\n76'}"
    assert load_history(swift).train[0]["step"] == 12  # wrapped inside the value, joined back


def test_a_file_without_metrics_names_the_closest_thing(tmp_path):
    f = tmp_path / "card.md"
    f.write_text("# a card\n\n| Model | MT-Bench |\n|---|---|\n| ours | 7.3 |\n")
    with pytest.raises(PrefpilotError, match="closest thing found: markdown table .*mt-bench"):
        load_history(f)
    assert cli(["diagnose", str(f)]) == 2


# ----------------------------------------------------------------------------- method detection
def test_method_unknown_gets_no_method_specific_finding():
    # mlx-style names (no TRL spelling, no log-probs, no code): the method cannot be told
    text = "\n".join(f"Iter {i}: Train loss {0.02 / i:.4f}, Chosen reward {-0.5 * i:.2f}, Rejected reward {-1.5 * i:.2f}, "
                     f"Accuracy 1.000, Margin {1.0 * i:.2f}" for i in range(1, 40))
    r = diagnose(text)
    assert r["method"] == "unknown" and "pass --method" in r["method_source"]
    table = __import__("prefpilot.diagnosis", fromlist=["catalogue"]).catalogue()["findings"]
    for f in r["findings"]:
        assert table[f["id"]]["methods"] == "all" or "unknown" in table[f["id"]]["methods"]
    assert r["summary"].startswith("healthy: none of the") and "method-independent" in r["summary"]
    assert diagnose(text, method="dpo")["method"] == "dpo"  # the user can say


def test_nll_loss_alone_does_not_make_a_run_cpo():
    # ms-swift DPO with an SFT term: summed log-probs, rewards relative to a reference
    rows = [{"step": s, "loss": 1.6 - 0.02 * s, "nll_loss": 0.95, "rewards/chosen": 0.02 * s, "rewards/rejected": -0.05 * s,
             "rewards/margins": 0.07 * s, "rewards/accuracies": 0.6, "logps/chosen": -180.0 + s, "logps/rejected": -171.0}
            for s in range(1, 20)]
    assert diagnose(rows)["method"] == "dpo"


def test_a_frozen_training_loss_is_no_learning_whatever_the_method():
    rows = [{"step": s, "loss": 0.6914, "grad_norm": 1.0} for s in range(1, 30)]  # only a loss: the method is unknown
    assert diagnose(rows)["method"] == "unknown" and "no_learning" in ids(diagnose(rows))
    for i, r in enumerate(rows):
        r["loss"] = 0.6914 - 0.002 * i
    assert "no_learning" not in ids(diagnose(rows))


def test_reference_free_rewards_give_the_method_and_beta():
    rows = [{"step": s, "loss": 1.2, "nll_loss": 1.1, "rewards/chosen": 2.5 * (-1.0 - 0.01 * s),
             "logps/chosen": -1.0 - 0.01 * s, "rewards/margins": 0.3} for s in range(1, 12)]
    r = diagnose(rows)
    assert r["method"] == "simpo" and r["assumed"]["beta"] == {"value": 2.5, "source": "the log (rewards / log-probs)"}


# ----------------------------------------------------------------------------- each method on its own scale
def orpo_rows(margin, acc, n=10):
    return [{"step": 10 * s, "loss": 1.4 - 0.01 * s, "nll_loss": 1.3, "log_odds_ratio": -0.8, "log_odds_chosen": -0.1,
             "rewards/chosen": -0.12, "rewards/rejected": -0.12 - margin, "rewards/margins": margin,
             "rewards/accuracies": acc, "logps/chosen": -1.2, "logps/rejected": -1.2 - 10 * margin}
            for s in range(1, n + 1)]


def test_orpo_accuracy_zero_and_negative_margins_are_not_healthy():
    r = diagnose(orpo_rows(-0.004, 0.0))  # margins of -0.004: tiny on DPO's scale, 0.04 nats/token for ORPO
    assert r["method"] == "orpo" and "negative_margin" in ids(r)
    mostly = orpo_rows(-0.003, 0.375, n=30)
    for row in mostly[:3]:
        row["rewards/margins"] = 0.002
    assert "negative_margin" in ids(diagnose(mostly))
    assert r["verdict"] == "problems"
    assert diagnose(orpo_rows(0.01, 0.7))["verdict"] == "healthy"


def test_flat_run_on_a_tiny_dataset_over_epochs_is_no_learning():
    rows = [{"step": 3 * e, "epoch": float(e), "loss": 0.692 - 0.0028 * (e - 1), "rewards/chosen": 0.04 * e,
             "rewards/rejected": -0.03 * e, "rewards/margins": 0.07 * e, "rewards/accuracies": 0.57,
             "logps/chosen": -80.0, "logps/rejected": -90.0, "learning_rate": 5e-6} for e in range(1, 8)]
    r = diagnose(rows)
    assert "no_learning" in ids(r)
    falling = [{**row, "loss": 0.69 - 0.03 * i, "rewards/accuracies": 0.55 + 0.04 * i} for i, row in enumerate(rows)]
    assert "no_learning" not in ids(diagnose(falling))


def test_held_out_noise_around_zero_is_not_divergence_but_chance():
    # eval accuracy never above chance, margins wandering around 0 (the shape of a preference part that is flat)
    evals = [{"step": 10 * i, "eval_loss": 2.63 - 0.03 * (i % 3), "eval_rewards/margins": m,
              "eval_rewards/accuracies": a}
             for i, (m, a) in enumerate([(0.018, 0.27), (0.017, 0.30), (0.018, 0.39), (-0.005, 0.36), (0.049, 0.45),
                                         (-0.005, 0.30), (0.001, 0.34), (0.026, 0.45), (-0.02, 0.27)], 1)]
    train = [{"step": 10 * i, "loss": 2.62 - 0.005 * i} for i in range(1, 10)]
    r = diagnose(train + evals, method="dpo")
    assert "eval_divergence" not in ids(r) and "chance_accuracy" in ids(r)


def test_frozen_held_out_numbers_are_no_learning_for_any_method():
    rows = [{"step": s, "loss": 19.0 + (s % 5) * 0.4, "rewards/accuracies": 0.3 + (s % 4) * 0.1,
             "rewards/margins": 0.01 * ((s % 3) - 1), "log_odds_ratio": -1.3, "nll_loss": 2.2, "learning_rate": 0.0}
            for s in range(1, 63)]
    rows += [{"step": s, "eval_loss": 2.1817, "eval_rewards/accuracies": 0.6, "eval_rewards/margins": 0.0335}
             for s in (13, 26, 39, 52)]
    r = diagnose(rows)
    assert r["method"] == "orpo" and "no_learning" in ids(r)
    assert "learning rate is exactly 0" in {f["id"]: f for f in r["findings"]}["no_learning"]["explanation"]
    moving = [dict(x) for x in rows]
    for x, v in zip([x for x in moving if "eval_loss" in x], (2.18, 2.05, 1.93, 1.85)):
        x["eval_loss"] = v
    assert "no_learning" not in ids(diagnose(moving))


def test_a_cut_short_or_malformed_notebook_says_so(tmp_path):
    real = (Path(__file__).parent / "real_logs" / "nb-unslothai-zephyr-dpo.ipynb").read_text(encoding="utf-8")
    cut = tmp_path / "cut.ipynb"
    cut.write_text(real[:60000], encoding="utf-8")  # a download that stopped part-way
    r = diagnose_source(str(cut), is_path=True)
    assert any("not valid JSON" in n for n in r["parsed"]["notes"]) and 0 < r["parsed"]["rows"] < 114
    bad = tmp_path / "bad.ipynb"
    bad.write_text('{"nbformat": 4, "cells": 5}')
    with pytest.raises(PrefpilotError, match="notebook without a list of cells"):
        load_history(bad)


# ----------------------------------------------------------------------------- stop 33: readers and rules mended on the spent held-out batch
def test_markdown_tables_without_outer_pipes_or_with_one_dash_rules():
    # a card's table copied from the rendered page loses its outer pipes; "|-|---|" is valid Markdown
    bare = ("The following hyperparameters were used during training:\n"
            "Training Loss | Epoch | Step | Validation Loss | Rewards/chosen | Rewards/accuracies | Rewards/margins |\n"
            "---|---|---|---|---|---|---|\n"
            + "".join(f"{0.9 - 0.1 * i:.4f} | {i}.0 | {100 * i} | {0.9 - 0.05 * i:.4f} | {0.1 * i:.4f} | 0.6{i} | "
                      f"{0.02 * i:.4f} |\n" for i in range(1, 4)))
    h = load_history(bare)
    assert h.info["format"] == "markdown table" and [r["step"] for r in h.eval] == [100, 200, 300]
    one_dash = ("| Epoch | Training Loss| Validation Loss| Rewards/margins |\n|-|---------|---------|---------|\n"
                "1| \t0.860300 |\t1.569590 |\t1.728091 |\n2| \t0.004500 |\t1.794171 |\t1.691094 |\n")
    h = load_history(one_dash)
    assert len(h.train) == 2 and h.train[1]["loss"] == pytest.approx(0.0045) and len(h.eval) == 2
    # a lone "---" (front matter, a rule) under a line that mentions a pipe is no table
    with pytest.raises(PrefpilotError):
        load_history("a | b\n---\nloss went down\n")


def test_a_dict_damaged_by_the_terminal_keeps_its_intact_pairs():
    # the DPO repo's NaN lines as pasted in an issue: a redraw wrote over one key, so the dict is no literal
    line = ("train stats after 160512 examples: {'rewards_train/chosen': 'nan', 'rewards_train/accuracies': '0', "
            "'l  's0  eogps_train/rejected': 'nan', 'loss/train': 'nan', 'grad_norm': 'nan'}")
    r = diagnose(line)
    assert "nan_loss" in ids(r) and r["verdict"] == "problems"
    assert load_history(line).train[0]["step"] == 160512


def test_a_low_learning_rate_is_a_note_when_the_loss_clearly_falls():
    rows = [{"step": i, "loss": 4.0 - 0.2 * i, "learning_rate": 2e-8} for i in range(1, 12)]
    cfg = {"method": "orpo", "learning_rate": 2e-8, "use_peft": True}
    f = {f["id"]: f for f in diagnose(rows, config=cfg)["findings"]}["lr_out_of_range"]
    assert f["severity"] == "info" and "does learn" in f["explanation"]
    flat = [{"step": i, "loss": 0.6931 - 0.0001 * i, "learning_rate": 1e-8} for i in range(1, 12)]
    f = {f["id"]: f for f in diagnose(flat, config={"method": "dpo", "learning_rate": 1e-8})["findings"]}
    assert f["lr_out_of_range"]["severity"] == "warning"


def test_one_stepless_row_with_one_large_reward_is_no_reference_mismatch():
    # epoch 0.01 of a large dataset can be many updates: a learned margin pushes one answer, a wrong reference both
    learned = {"loss": 0.24, "rewards/chosen": -0.28, "rewards/rejected": -7.67, "rewards/margins": 7.39,
               "rewards/accuracies": 0.88, "epoch": 0.01}
    assert "reference_mismatch" not in ids(diagnose([learned], method="dpo"))
    at_step_3 = dict(learned, step=3)  # a known early step: 77 nats in three updates is no learning
    assert "reference_mismatch" in ids(diagnose([at_step_3], method="dpo"))


def test_spin_cards_name_the_pair_real_and_generated():
    card = ("zephyr-7b-spin-iter0\n\nIt achieves the following results on the evaluation set:\n\n  • Loss: 0.2359\n"
            "  • Rewards/real: 1.3255\n  • Rewards/generated: -0.8966\n  • Rewards/accuracies: 0.9792\n"
            "  • Rewards/margins: 2.2221\n  • Logps/generated: -309.8145\n  • Logps/real: -304.9670\n")
    h = load_history(card)
    assert h.eval[0]["rewards/chosen"] == 1.3255 and h.eval[0]["logps/rejected"] == -309.8145


def test_one_row_whose_rewards_are_beta_times_its_log_probs_is_reference_free():
    # a card's single evaluation row: both answers' rewards are 2.5 x their per-token log-probs (SimPO's scale)
    row = {"eval_loss": 132.36, "eval_rewards/chosen": -0.8503, "eval_rewards/rejected": -0.8889,
           "eval_logps/chosen": -0.3401, "eval_logps/rejected": -0.3556, "eval_rewards/accuracies": 0.504,
           "eval_rewards/margins": 0.0387, "step": 400}
    r = diagnose([row])
    assert r["method"] == "unknown" and "2.5 × the policy's per-token" in r["method_source"]
    dpo = dict(row, **{"eval_rewards/chosen": -0.2780, "eval_rewards/rejected": -7.6717,
                       "eval_logps/chosen": -319.5, "eval_logps/rejected": -444.2})
    assert diagnose([dpo])["method"] == "dpo"  # two ratios that disagree: the TRL keys decide


def test_many_epochs_at_low_accuracy_are_no_learning_even_with_a_creeping_loss_or_few_points():
    # every-100-steps averages over 2.8 epochs: 5 points, the warm-up leaves 4, the loss creeps 0.6945 -> 0.6893
    five = [{"step": 100 * i, "epoch": 0.55 * i, "loss": v, "rewards/accuracies": a, "rewards/margins": m}
            for i, (v, a, m) in enumerate([(0.6945, 0.13, -0.001), (0.688, 0.15, 0.013), (0.6883, 0.17, 0.014),
                                           (0.6961, 0.14, -0.003), (0.6893, 0.14, 0.012)], 1)]
    assert "no_learning" in ids(diagnose(five, method="dpo"))
    # a loss summed over 4 accumulation steps (4 x ln 2, ln 2 on each epoch's short last batch): margins decide
    summed = []
    for i in range(30):
        short = i % 4 == 3
        summed.append({"step": i + 1, "epoch": round(0.31 * (i + 1), 2), "loss": 0.69 if short else 2.76 - 0.002 * i,
                       "rewards/margins": 0.02 + 0.001 * (i % 5), "rewards/accuracies": [0.25, 0.75, 0.5, 0.6][i % 4]})
    f = {f["id"]: f for f in diagnose(summed, method="dpo")["findings"]}
    assert f["no_learning"]["severity"] == "error" and f["no_learning"]["evidence"]["margin_max_nats"] <= 1.0
    # the same rows learning: margins of several nats are not flat, whatever the loss column does
    learning = [dict(r, **{"rewards/margins": 0.05 * r["step"], "rewards/accuracies": 0.6}) for r in summed]
    assert "no_learning" not in ids(diagnose(learning, method="dpo"))


def test_a_loss_only_dpo_log_that_sits_at_zero_is_memorised_pairs():
    # a notebook table with only the loss: sigmoid DPO at 0.000000 for most of 28 epochs over 100 pairs
    rows = [{"step": i, "loss": max(0.6931 - 0.03 * i, 0.0)} for i in range(1, 61)]
    f = {f["id"]: f for f in diagnose(rows, config={"method": "dpo", "beta": 0.1})["findings"]}
    assert f["margin_explosion"]["severity"] == "warning" and "not logged" in f["margin_explosion"]["evidence"]["accuracy"]
    # IPO's loss is a squared distance to a target margin: a small value says nothing about the ranking
    ipo = diagnose(rows, config={"method": "dpo", "beta": 0.1, "loss_type": ["ipo"]})
    assert "margin_explosion" not in ids(ipo)
    # a loss that levels off well above zero is not saturated
    level = [dict(r, loss=max(r["loss"], 0.3)) for r in rows]
    assert "margin_explosion" not in ids(diagnose(level, config={"method": "dpo", "beta": 0.1}))


def test_collapsing_log_probs_report_both_degeneration_and_the_displacement_behind_it():
    rows = []
    for i in range(1, 41):
        c, r = -100 - 30 * i, -104 - 31 * i
        rows.append({"step": i, "loss": 0.4, "rewards/accuracies": 0.5, "logps/chosen": c, "logps/rejected": r,
                     "rewards/chosen": 0.2 * (c + 100), "rewards/rejected": 0.2 * (r + 100),
                     "rewards/margins": 0.2 * (c - r) + 0.1 * i})
    found = ids(diagnose(rows, config={"method": "dpo", "beta": 0.2}))
    assert {"degeneration", "likelihood_displacement"} <= set(found)


def _rich_table(step: int, loss: float, acc: float) -> str:
    rows = [("accuracy", acc), ("chosen_reward", 0.05 * step), ("dpo_loss", loss), ("margin", 0.01 * step),
            ("num_tokens", 112638), ("rejected_reward", -0.02 * step)]
    body = "\n".join(f"│ {k:<15} │ {v:<9} │" for k, v in rows)
    return (f"               Step {step}\n┏━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━┓\n┃ Metric          ┃ Value     ┃\n"
            f"┡━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━┩\n{body}\n└─────────────────┴───────────┘\n")


def test_rich_key_value_tables_one_per_step_are_the_run():
    # tinker-cookbook prints each step's metrics as a Rich box table under "Step N"
    text = "training...\n" + "".join(_rich_table(s, 0.69 - 0.01 * s, 0.5 + 0.02 * s) for s in (10, 20, 30))
    h = load_history(text)
    assert [r["step"] for r in h.train] == [10, 20, 30]
    assert h.train[1]["loss"] == pytest.approx(0.49) and h.train[2]["rewards/margins"] == pytest.approx(0.3)
    r = diagnose(text)
    assert r["method"] == "dpo" and "dpo_loss" in r["method_source"]
    assert r["parsed"]["format"].startswith("key/value box tables")


def test_per_step_bullet_lists_under_step_headers_are_train_and_eval_rows():
    # NeMo-RL's console: a "Step N/M" header, then "Training Results" and "Validation Results" bullet lists
    def step(n, loss, acc):
        return (f"========================= Step {n}/3 =========================\n▶ Taking a training step...\n\n"
                f"📊 Validation Results for `default` set:\n    • Validation loss: {loss + 0.01}\n"
                f"    • Validation accuracy: {acc}\n\n  ⏱️  Validation Timing for `default` set:\n"
                f"    • Total validation time: 3.17s\n\n📊 Training Results:\n  • loss: {loss}\n"
                f"  • preference_loss: {loss}\n  • accuracy: {acc}\n  • rewards_chosen_mean: {0.1 * n}\n"
                f"  • rewards_rejected_mean: {-0.1 * n}\n  • Training FLOPS: 1.11 TFLOPS\n")
    h = load_history("".join(step(n, 0.69 - 0.05 * n, 0.5 + 0.1 * n) for n in (1, 2, 3)))
    assert [r["step"] for r in h.train] == [1, 2, 3] and [r["step"] for r in h.eval] == [1, 2, 3]
    assert h.train[2]["rewards/rejected"] == pytest.approx(-0.3) and h.eval[1]["loss"] == pytest.approx(0.60)
    assert h.info["format"] == "per-step bullet lists"
