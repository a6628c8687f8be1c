"""method: orpo (TRL's experimental ORPOTrainer) and method: kto (KTOTrainer): schemas, validator traps, KTO data,
real runs on the tiny model through train(), `prefpilot train` and MCP launch_run (issue 27)."""
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from prefpilot import rundir
from prefpilot.config.validate import schema, validate
from prefpilot.datacheck.layouts import kto_rows, label_counts, one_label_batches, unpair
from prefpilot.train.data import row_problem
from skill_docs import blocks

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TRL_EXPERIMENTAL_SILENCE": "1"}


def codes(report, kind="errors"):
    return {f["code"] for f in report[kind]}


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def unpaired(n_d, n_u, order="mixed"):
    rows = [{"prompt": f"What is {i}+1?", "completion": f" {i + 1}", "label": True} for i in range(n_d)]
    rows += [{"prompt": f"What is {i}+1?", "completion": f" {i + 7}", "label": False} for i in range(n_u)]
    if order == "mixed":
        rows.sort(key=lambda r: r["prompt"])
    return rows


# ----------------------------------------------------------------------------- schemas
@pytest.mark.parametrize("method,cls", [("orpo", "trl.experimental.orpo:ORPOConfig"), ("kto", "trl:KTOConfig")])
def test_schema_has_every_field_of_the_trl_config(method, cls):
    import importlib
    mod, name = cls.split(":")
    config = getattr(importlib.import_module(mod), name)
    props = schema(method)["properties"]
    fields = {f.name for f in dataclasses.fields(config) if not f.name.startswith("_")}
    assert fields <= set(props), fields - set(props)
    assert props["method"]["enum"] == [method]
    for f in dataclasses.fields(config):  # defaults as TRL declares them
        if f.name in ("beta", "learning_rate", "max_length") or f.name.endswith("_weight"):
            assert props[f.name].get("default") == f.default, f.name
    if method == "orpo":
        assert "λ" in props["beta"]["description"] and "loss_type" not in props  # ORPO has one loss
        assert "precompute_ref_log_probs" not in props and "ref_model_mixup_alpha" not in props
    else:
        assert props["loss_type"]["enum"] == ["kto", "apo_zero_unpaired"]
        assert props["train_sampling_strategy"]["default"] == "sequential"


def test_orpo_and_kto_validate_and_unknown_methods_name_all_four():
    for m in ("orpo", "kto"):
        r = validate({"method": m, "per_device_train_batch_size": 2}, complete=False)
        assert r["valid"] and r["method"] == m and r["normalized"]["method"] == m, r["errors"]
    bad = validate({"method": "ipo"}, complete=False)
    assert not bad["valid"] and all(m in bad["errors"][0]["message"] for m in ("dpo", "simpo", "orpo", "kto"))
    # a key of another trainer names its owner
    r = validate({"method": "dpo", "desirable_weight": 1.2}, complete=False)
    assert r["errors"][0]["code"] == "wrong_method" and "set method: kto" in r["errors"][0]["suggestion"]


# ----------------------------------------------------------------------------- ORPO traps
@pytest.mark.parametrize("key,value", [("precompute_ref_log_probs", True), ("ref_model_mixup_alpha", 0.5),
                                       ("sync_ref_model", True), ("ld_alpha", 0.5)])
def test_orpo_reference_options_are_errors(key, value):
    r = validate({"method": "orpo", key: value}, complete=False)
    f = next(e for e in r["errors"] if e["path"] == f"/{key}")
    assert f["code"] == "wrong_method" and "ORPO has no reference model" in f["suggestion"]


def test_orpo_beta_is_explained_as_lambda():
    r = validate({"method": "orpo", "beta": 0.1}, complete=False)
    note = next(n for n in r["notes"] if n.startswith("ORPO"))
    assert "λ" in note and "not DPO's β" in note and "0.1" in note
    from trl.experimental.orpo import ORPOConfig
    assert ORPOConfig.__dataclass_fields__["beta"].default == 0.1  # the note's "ORPOConfig's default ... 0.1"
    assert "λ" in ORPOConfig.__dataclass_fields__["beta"].metadata["help"]


# ----------------------------------------------------------------------------- KTO traps
def test_kto_batch_of_one_and_shuffled_sampling_are_refused_as_trl_does():
    r = validate({"method": "kto", "per_device_train_batch_size": 1}, complete=False)
    assert "kto_batch" in codes(r)
    r = validate({"method": "kto", "per_device_train_batch_size": 4, "train_sampling_strategy": "random"},
                 complete=False)
    assert any(e["path"] == "/train_sampling_strategy" for e in r["errors"])
    # apo_zero_unpaired has no KL term: TRL takes a batch of 1 and any sampling
    r = validate({"method": "kto", "loss_type": "apo_zero_unpaired", "per_device_train_batch_size": 1,
                  "train_sampling_strategy": "random"}, complete=False)
    assert r["valid"], r["errors"]
    # TRL's own checks, which these findings mirror
    src = Path(__import__("trl.trainer.kto_trainer", fromlist=["x"]).__file__).read_text()
    assert "per_device_train_batch_size <= 1" in src and 'train_sampling_strategy != "sequential"' in src
    r = validate({"method": "kto", "sync_ref_model": True, "use_peft": True}, complete=False)
    assert any(e["path"] == "/sync_ref_model" for e in r["errors"])


def test_kto_class_balance_warning_matches_the_bounds_trl_recommends(tmp_path, tiny_cfg):
    data = write_jsonl(tmp_path / "u.jsonl", unpaired(30, 10))
    r = validate({**tiny_cfg, "method": "kto", "dataset_path": str(data), "per_device_train_batch_size": 4})
    f = next(w for w in r["warnings"] if w["code"] == "kto_class_balance")
    assert "30 desirable and 10 undesirable" in f["message"] and "Eq. 8" in f["message"]
    # TRL's bounds (kto_trainer.py): desirable in [n_U·λ_U/n_D, 1.33·n_U·λ_U/n_D], undesirable in
    # [n_D·λ_D/n_U/1.33, n_D·λ_D/n_U]
    assert "desirable_weight in [0.333, 0.444]" in f["suggestion"] and "undesirable_weight in [2.25, 3]" in f["suggestion"]  # 4/3; TRL rounds it to 1.33
    for fix in ({"undesirable_weight": 2.5}, {"desirable_weight": 0.4}):  # ratio 1.2 inside [1, 4/3]
        r = validate({**tiny_cfg, "method": "kto", "dataset_path": str(data), "per_device_train_batch_size": 4,
                      **fix})
        assert "kto_class_balance" not in codes(r, "warnings"), fix
    # paired data gives one desirable and one undesirable row per pair: balanced at weights 1
    r = validate({**tiny_cfg, "method": "kto", "dataset_path": "builtin:arith-prefs", "per_device_train_batch_size": 4})
    assert r["valid"] and not {"kto_class_balance", "kto_one_label_batches"} & codes(r, "warnings")


def test_kto_batches_of_one_label_in_file_order_are_warned(tmp_path, tiny_cfg):
    sorted_file = write_jsonl(tmp_path / "sorted.jsonl", unpaired(20, 20, order="sorted"))
    r = validate({**tiny_cfg, "method": "kto", "dataset_path": str(sorted_file), "per_device_train_batch_size": 4})
    f = next(w for w in r["warnings"] if w["code"] == "kto_one_label_batches")
    assert "10 of 10 batches of 4" in f["message"]
    mixed = write_jsonl(tmp_path / "mixed.jsonl", unpaired(20, 20))
    r = validate({**tiny_cfg, "method": "kto", "dataset_path": str(mixed), "per_device_train_batch_size": 4})
    assert "kto_one_label_batches" not in codes(r, "warnings")
    r = validate({**tiny_cfg, "method": "dpo", "dataset_path": str(mixed)})  # DPO cannot: it says to use KTO
    assert not r["valid"] and "set method: kto" in r["errors"][0]["suggestion"]
    r = validate({**tiny_cfg, "method": "kto", "dataset_path": str(mixed), "per_device_train_batch_size": 4})
    assert r["valid"] and not r["warnings"], r["warnings"]
    only = write_jsonl(tmp_path / "only.jsonl", unpaired(8, 0))
    r = validate({**tiny_cfg, "method": "kto", "dataset_path": str(only), "per_device_train_batch_size": 4})
    assert "kto_one_label" in codes(r, "warnings")


# ----------------------------------------------------------------------------- KTO data
def test_paired_rows_unpair_as_trl_documents_and_interleave():
    from datasets import Dataset
    from trl.data_utils import unpair_preference_dataset
    pairs = [{"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(5)]
    ours, n = kto_rows(pairs)
    assert n == 5 and len(ours) == 10
    assert [r["label"] for r in ours] == [True, False] * 5  # each batch of 2+ holds both labels
    theirs = unpair_preference_dataset(Dataset.from_list(pairs)).to_list()
    key = lambda r: (r["prompt"], r["completion"], r["label"])  # noqa: E731
    assert Counter(map(key, ours)) == Counter(map(key, theirs))  # the same rows, TRL orders them by label
    assert [r["label"] for r in theirs] == [True] * 5 + [False] * 5
    # implicit prompt: TRL's extract_prompt split first
    row = unpair({"chosen": "Q: 2+2? A: 4", "rejected": "Q: 2+2? A: 5"})
    assert row[0] == {"prompt": "Q: 2+2? A:", "completion": " 4", "label": True} and row[1]["completion"] == " 5"
    # unpaired rows go through as they are; counts and one-label batches
    mixed = [*unpaired(2, 1), *pairs[:1]]
    assert label_counts(mixed) == (3, 2) and len(kto_rows(mixed)[0]) == 5
    assert one_label_batches(unpaired(4, 4, order="sorted"), 2) == (4, 4)


def test_unpaired_rows_are_only_for_kto():
    row = {"prompt": "Hi", "completion": " there", "label": True}
    assert row_problem(row, unpaired_ok=True) is None
    assert "only method: kto" in row_problem(row)
    assert "label" in row_problem({**row, "label": "yes"}, unpaired_ok=True)
    assert "empty" in row_problem({**row, "completion": " "}, unpaired_ok=True)


def test_export_names_the_trl_entry_points():
    from prefpilot.config.export import export_trl
    out, notes = export_trl({"method": "kto", "per_device_train_batch_size": 4, "desirable_weight": 1.2})
    assert out == {"per_device_train_batch_size": 4, "desirable_weight": 1.2}
    assert any("trl kto --config" in n for n in notes)
    from trl.cli.commands import __file__ as cmds
    assert 'TrainingCommand("kto")' in Path(cmds).read_text()  # `trl kto` exists in TRL 1.16
    out, notes = export_trl({"method": "orpo", "beta": 0.1})
    assert out == {"beta": 0.1} and any("no `trl` CLI command" in n and "ORPOConfig" in n for n in notes)
    assert 'TrainingCommand("orpo")' not in Path(cmds).read_text()


def test_validate_of_orpo_and_kto_imports_no_torch():
    code = ("import sys; from prefpilot.config.validate import validate; from prefpilot.plan import plan\n"
            "for m in ('orpo', 'kto'): validate({'method': m, 'per_device_train_batch_size': 2,"
            " 'dataset_path': 'builtin:arith-prefs', 'model_name_or_path': 'HuggingFaceTB/SmolLM2-135M-Instruct'})\n"
            "bad = [m for m in ('torch', 'transformers', 'trl') if m in sys.modules]\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, env=ENV)


# ----------------------------------------------------------------------------- real runs
@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    from tiny_model import build_tiny_model
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def tiny_cfg(tmp_path):
    # validate only: a model folder that exists (the data findings need a complete config)
    (tmp_path / "m").mkdir(exist_ok=True)
    return {"model_name_or_path": str(tmp_path / "m"), "max_length": 64, "save_strategy": "no"}


def base(tiny, **cfg):
    return {"model_name_or_path": str(tiny), "dataset_path": "builtin:arith-prefs", "max_steps": 3,
            "learning_rate": 5e-3, "max_length": 64, "save_strategy": "no", "seed": 0, **cfg}


def log1mexp(x):
    return math.log(-math.expm1(x))


def logsigmoid(x):
    return -math.log1p(math.exp(-x))


@pytest.mark.slow
def test_orpo_run_logs_trls_odds_ratio_loss_and_diagnoses_as_orpo(tiny, tmp_path):
    from prefpilot.diagnosis import diagnose
    from prefpilot.train.trainer import train
    beta = 0.25
    status = train(base(tiny, method="orpo", beta=beta, per_device_train_batch_size=1), tmp_path / "r",
                   progress=False)
    assert status["state"] == "completed" and status["method"] == "orpo"
    assert status["verdict"] in ("healthy", "problems", "inconclusive") and "diagnosis_error" not in status
    rows = rundir.read_metrics(tmp_path / "r")
    assert len(rows) == 3
    for r in rows:  # a batch of one pair: the logged means are that pair's values
        c, rj = r["logps/chosen"], r["logps/rejected"]  # average per-token log-probs
        log_odds = (c - rj) - (log1mexp(c) - log1mexp(rj))
        assert r["log_odds_chosen"] == pytest.approx(log_odds, abs=1e-4)
        assert r["log_odds_ratio"] == pytest.approx(logsigmoid(log_odds), abs=1e-4)
        assert r["loss"] == pytest.approx(r["nll_loss"] - beta * r["log_odds_ratio"], abs=1e-4)
        assert r["rewards/chosen"] == pytest.approx(beta * c, abs=1e-5)  # β × average log-prob, no reference
    assert yaml.safe_load((tmp_path / "r/config.yaml").read_text())["method"] == "orpo"
    rep = diagnose(str(tmp_path / "r"))
    assert rep["method"] == "orpo" and rep["method_source"] == "config"
    assert (tmp_path / "r/final/model.safetensors").is_file()
    # prefpilot eval: ORPO's held-out pairs (the builtin test split), its per-token accuracy beside the base model's
    from prefpilot.evaluation.run import evaluate
    ev = evaluate(tmp_path / "r", prompts=1, max_new_tokens=4, reference_cache=False)
    from prefpilot.evaluation.run import default_max_pairs
    assert ev["pairs"] == default_max_pairs(tmp_path / "r", yaml.safe_load((tmp_path / "r/config.yaml").read_text()))
    assert ev["method"] == "orpo" and "implicit" not in ev["preference_accuracy"]
    assert 0 <= ev["preference_accuracy"]["per_token"] <= 1 and "per_token" in ev["before"]


def _kto_loss(r, beta, dw=1.0, uw=1.0, loss_type="kto"):
    """The skill's KTO formula blocks (orpo-kto.md) for a batch of one desirable and one undesirable row, from the
    values TRL logged: rewards/* = β × log-ratio."""
    forms = {tag: body for _, tag, body, _ in blocks("kto-formula")}
    prefix = "" if loss_type == "kto" else loss_type + "_"
    ns = {"sigmoid": lambda x: 1 / (1 + math.exp(-x)), "beta": beta, "kl": r["kl"], "desirable_weight": dw,
          "undesirable_weight": uw}
    d = eval(forms[prefix + "desirable"], {"__builtins__": {}}, {**ns, "logratio": r["rewards/chosen"] / beta})
    u = eval(forms[prefix + "undesirable"], {"__builtins__": {}}, {**ns, "logratio": r["rewards/rejected"] / beta})
    return (d + u) / 2


@pytest.mark.slow
def test_kto_from_paired_data_through_prefpilot_train(tiny, tmp_path):
    """`prefpilot train` on DPO pairs: each pair unpaired on the fly, interleaved, and the logged loss is TRL's."""
    data = tmp_path / "pairs.jsonl"
    src = (ROOT / "backend/prefpilot/data/arith-prefs.train.jsonl").read_text().splitlines()[:40]
    data.write_text("\n".join(src) + "\n")
    beta = 0.5
    cfg = tmp_path / "kto.yaml"
    cfg.write_text(yaml.safe_dump(base(tiny, method="kto", beta=beta, dataset_path=str(data),
                                       per_device_train_batch_size=2, eval_holdout=False)))
    r = subprocess.run([sys.executable, "-m", "prefpilot.cli", "train", str(cfg), "--run-dir", str(tmp_path / "r")],
                       env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    st = rundir.read_status(tmp_path / "r")
    assert st["state"] == "completed" and st["method"] == "kto" and st["kto_unpaired_pairs"] == 40
    assert st["verdict"] in ("healthy", "problems", "inconclusive") and "diagnosis_error" not in st  # live diagnosis
    rows = rundir.read_metrics(tmp_path / "r")
    assert len(rows) == 3
    for row in rows:  # every batch of two holds one desirable and one undesirable row: both rewards are logged
        assert {"kl", "rewards/chosen", "rewards/rejected", "rewards/margins"} <= set(row)
        assert row["loss"] == pytest.approx(_kto_loss(row, beta), abs=1e-4)
    # prefpilot eval on pairs: KTO has a reference, so its implicit reward β·(log-ratio chosen − rejected) is scored
    from prefpilot.evaluation.run import evaluate
    ev = evaluate(tmp_path / "r", pairs="builtin:arith-prefs", prompts=0, reference_cache=False)
    assert ev["method"] == "kto" and 0 <= ev["preference_accuracy"]["implicit"] <= 1


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
def test_kto_on_unpaired_data_with_weights(tiny, tmp_path, loss_type):
    from prefpilot.errors import PrefpilotError
    from prefpilot.evaluation.run import evaluate
    from prefpilot.train.trainer import train
    data = write_jsonl(tmp_path / "u.jsonl", unpaired(14, 14))  # sorted by prompt: D, U, D, U...
    status = train(base(tiny, method="kto", loss_type=loss_type, beta=0.1, dataset_path=str(data),
                        per_device_train_batch_size=2, desirable_weight=1.2, eval_holdout=4), tmp_path / "r",
                   progress=False)
    assert status["state"] == "completed" and "kto_unpaired_pairs" not in status
    for row in rundir.read_metrics(tmp_path / "r"):
        assert row["loss"] == pytest.approx(_kto_loss(row, 0.1, dw=1.2, loss_type=loss_type), abs=1e-4)
    # held-out unpaired rows: prefpilot eval says it needs pairs instead of failing inside the scorer
    with pytest.raises(PrefpilotError, match="unpaired") as exc:
        evaluate(tmp_path / "r", prompts=0)
    assert exc.value.code == "no_heldout"


@pytest.mark.slow
def test_orpo_through_mcp_launch_run(tmp_path):
    from test_mcp import call, session
    from tiny_model import build_tiny_model
    (tmp_path / "data").mkdir()
    build_tiny_model(tmp_path / "model")
    cfg = {"method": "orpo", "model_name_or_path": "model", "dataset_path": "builtin:arith-prefs", "beta": 0.1,
           "per_device_train_batch_size": 2, "learning_rate": 5e-3, "max_length": 64, "save_strategy": "no",
           "max_steps": 4}
    with session(tmp_path) as (portal, client):
        res = call(portal, client, "launch_run", {"config": cfg})
        assert not res.is_error, res.content
        run = res.structured_content
        assert run["run_id"] and "-orpo-" in run["run_id"]
        deadline = time.time() + 400
        while True:
            st = call(portal, client, "wait_run", {"run_id": run["run_id"], "timeout_s": 20}).structured_content
            if st["state"] not in ("queued", "running") or time.time() > deadline:
                break
        assert st["state"] == "completed", st.get("log_tail")
        assert st["step"] == 4 and "nll_loss" in st["last_metrics"]
        assert st["verdict"] in ("healthy", "problems", "inconclusive")  # the live diagnosis ran on ORPO's rows
        d = call(portal, client, "diagnose_run", {"run_id": run["run_id"]}).structured_content
        assert d["method"] == "orpo"


# ----------------------------------------------------------------------------- tables and plan
@pytest.mark.parametrize("method,cls", [("orpo", "trl.experimental.orpo:ORPOConfig"), ("kto", "trl:KTOConfig")])
def test_table_defaults_are_trls_and_rows_have_sources(method, cls):
    import importlib
    from prefpilot import skills
    mod, name = cls.split(":")
    fields = getattr(importlib.import_module(mod), name).__dataclass_fields__
    t = skills.load_table(method)
    for k, v in t["defaults"].items():
        if k != "source":
            assert fields[k].default == v, k
    md = (ROOT / f"skills/mlops/trl-fine-tuning/references/{method}-hyperparameters.md").read_text()
    for row in t["rows"]:
        assert row["source"] and 0 < row["beta"] <= 1 and 0 < row["learning_rate"] < 1e-4, row
        line = next(line for line in md.splitlines() if line.startswith(f"| {row['model']} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[1]) == row["beta"] and float(cells[2]) == row["learning_rate"]
    for key, r in t["ranges"].items():
        assert r["sane"][0] <= r["typical"][0] <= r["typical"][1] <= r["sane"][1] and r["source"], key


def test_released_orpo_scripts_and_trls_kto_script_say_what_the_tables_say():
    from prefpilot import skills
    kto_script = Path(__import__("trl.scripts.kto", fromlist=["x"]).__file__).read_text()
    row = next(r for r in skills.load_table("kto")["rows"] if r["id"] == "kto-qwen1.5-1.8b-trl")
    assert "--learning_rate 5e-7" in kto_script and "--per_device_train_batch_size 16" in kto_script
    assert row["learning_rate"] == 5e-7 and row["total_batch_size"] == 16
    orpo = {r["id"]: r for r in skills.load_table("orpo")["rows"]}
    assert orpo["orpo-mistral-7b-base-ultrafeedback"]["beta"] == 0.1  # --alpha 0.1 in run_mistral_orpo_beta.sh
    assert orpo["orpo-mistral-7b-base-capybara"]["beta"] == 0.05  # --alpha 0.05 in run_mistral_orpo_capybara.sh


@pytest.mark.parametrize("method", ["orpo", "kto"])
def test_plan_orpo_and_kto_from_their_tables(method):
    from prefpilot.plan import plan
    from prefpilot.skills import load_table
    out = plan(method=method, gpu_memory_gb=80, num_gpus=1, model_params=1.5e9)
    cfg, row = out["config"], out["table_row"]
    assert cfg["method"] == method and row in load_table(method)["rows"] and not out["memory_savers"]
    assert cfg["beta"] == row["beta"] and cfg["learning_rate"] == row["learning_rate"]
    assert validate(cfg)["valid"]
    if method == "kto":
        assert cfg["loss_type"] == "kto" and cfg["per_device_train_batch_size"] >= 4
    else:
        assert "loss_type" not in cfg and "precompute_ref_log_probs" not in cfg
        assert any("λ" in r for r in out["rationale"])


def test_range_warnings_for_orpo_and_kto():
    r = validate({"method": "orpo", "beta": 2.0}, complete=False)  # a SimPO β copied into ORPO
    f = next(w for w in r["warnings"] if w["code"] == "beta_high")
    assert "λ" in f["message"] and "SimPO-scale" in f["message"]
    assert "beta_high" not in codes(validate({"method": "orpo", "beta": 0.1}, complete=False), "warnings")
    r = validate({"method": "kto", "per_device_train_batch_size": 2, "learning_rate": 1e-5}, complete=False)
    assert {"kto_small_batch", "learning_rate_high"} <= codes(r, "warnings")


# ----------------------------------------------------------------------------- the skill's formulas
def test_orpo_formula_block_is_trls_odds_ratio_loss():
    import torch
    import torch.nn.functional as F
    from trl.experimental.orpo import ORPOTrainer
    (form,) = [body for _, _, body, _ in blocks("orpo-formula")]
    torch.manual_seed(0)
    c, r = -torch.rand(16, dtype=torch.float64) * 3 - 0.01, -torch.rand(16, dtype=torch.float64) * 3 - 0.01
    nll = 1.7

    class Fake:  # what odds_ratio_loss reads from the trainer
        beta = 0.25
        accelerator = type("A", (), {"device": torch.device("cpu")})()
    losses, rc, rr, ratio, log_odds = ORPOTrainer.odds_ratio_loss(Fake(), c, r)
    trl_loss = nll - losses.mean()  # get_batch_loss_metrics: loss = policy_nll_loss - losses.mean()
    ns = {"logsigmoid": F.logsigmoid, "log1mexp": lambda x: torch.log(-torch.expm1(x)), "nll": nll,
          "beta": Fake.beta, "c": c, "r": r}
    ours = eval(form, {"__builtins__": {}}, ns).mean()
    assert float(ours) == pytest.approx(float(trl_loss), abs=1e-6)  # TRL computes in float32
    assert torch.allclose(rc.double(), Fake.beta * c, atol=1e-6)  # rewards/chosen = β × average log-prob


def test_kto_formula_blocks_are_in_the_skill():
    tags = {tag for _, tag, _, _ in blocks("kto-formula")}
    assert tags == {"desirable", "undesirable", "apo_zero_unpaired_desirable", "apo_zero_unpaired_undesirable"}
    from trl import KTOConfig
    assert KTOConfig.__dataclass_fields__["loss_type"].metadata["choices"] == ["kto", "apo_zero_unpaired"]
    # the trainer's own lines the blocks transcribe (trl/trainer/kto_trainer.py, TRL 1.16)
    src = Path(__import__("trl.trainer.kto_trainer", fromlist=["x"]).__file__).read_text()
    for line in ("chosen_losses = 1 - F.sigmoid(self.beta * (chosen_logratios - kl))",
                 "rejected_losses = 1 - F.sigmoid(self.beta * (kl - rejected_logratios))",
                 "chosen_losses = 1 - F.sigmoid(self.beta * chosen_logratios)",
                 "rejected_losses = F.sigmoid(self.beta * rejected_logratios)",
                 "kl = self.accelerator.gather_for_metrics(kl).mean().clamp(min=0)"):
        assert line in src, line


@pytest.mark.slow
def test_kto_resume_continues_the_same_sequential_batches(tiny, tmp_path):
    """A KTO run stopped at a checkpoint and resumed logs what the uninterrupted run logs: the sequential batches
    (and so the KL pairing) pick up where they stopped."""
    from prefpilot.train.trainer import train
    cfg = base(tiny, method="kto", beta=0.1, per_device_train_batch_size=2, lr_scheduler_type="constant",
               eval_holdout=False, save_strategy="steps", save_steps=2)
    train({**cfg, "max_steps": 4}, tmp_path / "whole", progress=False)
    train({**cfg, "max_steps": 2}, tmp_path / "split", progress=False)
    assert (tmp_path / "split/checkpoints/checkpoint-2").is_dir()
    status = train({**cfg, "max_steps": 4}, tmp_path / "split", resume=True, progress=False)
    assert status["state"] == "completed" and status["step"] == 4
    whole, split = rundir.read_metrics(tmp_path / "whole"), rundir.read_metrics(tmp_path / "split")
    assert [r["step"] for r in split] == [1, 2, 3, 4]
    for a, b in zip(whole, split):
        for key in ("loss", "kl", "rewards/chosen", "logps/rejected"):
            assert b[key] == pytest.approx(a[key], abs=1e-4), (a["step"], key)


# ----------------------------------------------------------------------------- plain CPO
def test_cpo_schema_and_validation():
    from trl.experimental.cpo import CPOConfig
    props = schema("cpo")["properties"]
    assert {f.name for f in dataclasses.fields(CPOConfig) if not f.name.startswith("_")} <= set(props)
    assert props["loss_type"]["enum"] == CPOConfig.__dataclass_fields__["loss_type"].metadata["choices"]
    r = validate({"method": "cpo", "loss_type": "ipo", "cpo_alpha": 1.0}, complete=False)
    assert r["valid"] and r["normalized"]["loss_type"] == "ipo" and not r["notes"]  # TRL's keys as they are
    r = validate({"method": "cpo", "loss_type": "robust"}, complete=False)
    assert "unknown_loss_type" in codes(r)
    r = validate({"method": "cpo", "precompute_ref_log_probs": True}, complete=False)
    assert "CPO has no reference model" in r["errors"][0]["suggestion"]


@pytest.mark.slow
def test_cpo_run_logs_trls_cpo_loss(tiny, tmp_path):
    from prefpilot.train.trainer import train
    beta = 0.1
    status = train(base(tiny, method="cpo", beta=beta, per_device_train_batch_size=1), tmp_path / "r", progress=False)
    assert status["state"] == "completed" and status["method"] == "cpo"
    for r in rundir.read_metrics(tmp_path / "r"):  # sigmoid: −log σ(β·(c − r)) + cpo_alpha (1.0) × NLL, summed log-probs
        assert r["rewards/chosen"] == pytest.approx(beta * r["logps/chosen"], abs=1e-4)
        assert r["loss"] == pytest.approx(-logsigmoid(r["rewards/chosen"] - r["rewards/rejected"]) + r["nll_loss"],
                                          abs=1e-4)


def test_explain_orpo_and_kto_come_from_the_skill(capsys):
    from prefpilot.cli import main as cli
    from prefpilot.explain import explain_loss
    orpo_block = next(body for _, _, body, _ in blocks("orpo-formula"))
    e = explain_loss("orpo")
    assert e["method"] == "orpo" and e["formula"] == orpo_block and "λ" in e["explanation"]
    assert e["starting_hyperparameters"][0]["source"].startswith("xfactlab/orpo")
    kto = {tag: body for _, tag, body, _ in blocks("kto-formula")}
    e = explain_loss("apo_zero_unpaired")
    assert e["method"] == "kto" and kto["apo_zero_unpaired_undesirable"] in e["formula"]
    assert explain_loss(None, "kto")["loss_type"] == "kto"
    with pytest.raises(Exception, match="use one of kto, apo_zero_unpaired"):
        explain_loss("sigmoid", "kto")
    assert cli(["explain", "--method", "kto"]) == 0
    assert "formula (per row; tested against TRL)" in capsys.readouterr().out
