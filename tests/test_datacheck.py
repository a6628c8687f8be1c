"""`prefpilot data check` / `data convert` and MCP check_dataset on real public data (tests/real_data/SOURCES.md),
with the tiny local model for the tokenizer checks and reference scoring."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prefpilot.datacheck import check_data, convert_data, layouts, refcache
from prefpilot.errors import PrefpilotError
from tiny_model import build_tiny_model

REAL = Path(__file__).parent / "real_data"
ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "prefpilot.cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFPILOT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def ids(report, severities=("error", "warning")):
    return {f["id"] for f in report["findings"] if f["severity"] in severities}


# ------------------------------------------------------------------ layouts on real files
@pytest.mark.parametrize("name,layout,trl", [
    ("llamafactory-dpo_en_demo.json", "sharegpt", "conversational"),
    ("llamafactory-kto_en_demo.json", "kto_messages", "unpaired"),
    ("hh-rlhf-harmless-base-test.jsonl", "hh_rlhf", "standard"),
    ("ultrafeedback-binarized-row0.jsonl", "ultrafeedback", "conversational"),
])
def test_real_layouts_are_detected_and_convert_to_rows_trl_reads(tmp_path, name, layout, trl):
    rep = check_data(str(REAL / name))
    assert rep["format"] == layout and rep["trl_format"] == trl
    assert "foreign_layout" in {f["id"] for f in rep["findings"]}
    out = convert_data(str(REAL / name), str(tmp_path / "out.jsonl"))
    assert out["rows"] == rep["rows"] and out["skipped"] == 0 and out["to"] == trl
    again = check_data(str(tmp_path / "out.jsonl"))
    assert again["format"] == trl and "foreign_layout" not in {f["id"] for f in again["findings"]}
    # deterministic: the same input gives the same bytes
    convert_data(str(REAL / name), str(tmp_path / "again.jsonl"))
    assert (tmp_path / "out.jsonl").read_bytes() == (tmp_path / "again.jsonl").read_bytes()


def test_sharegpt_conversion_keeps_turns_and_roles(tmp_path):
    src = json.loads((REAL / "llamafactory-dpo_en_demo.json").read_text())
    convert_data(str(REAL / "llamafactory-dpo_en_demo.json"), str(tmp_path / "o.jsonl"))
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    multi = next(i for i, r in enumerate(src) if len(r["conversations"]) > 2)
    assert [m["role"] for m in rows[multi]["prompt"]] == [
        {"human": "user", "gpt": "assistant", "system": "system"}[t["from"]] for t in src[multi]["conversations"]]
    assert rows[multi]["chosen"] == [{"role": "assistant", "content": src[multi]["chosen"]["value"]}]


def test_implicit_prompt_split_is_trls_own_and_hh_cuts_at_the_assistant_turn():
    from trl.data_utils import extract_prompt
    hh = [json.loads(line) for line in (REAL / "hh-rlhf-harmless-base-test.jsonl").read_text().splitlines()]
    moved = 0
    for row in hh:
        assert layouts.to_trl(row, "implicit_prompt") == extract_prompt(row)  # TRL's rule, unchanged
        ours = layouts.to_trl(row, "hh_rlhf")
        assert ours["prompt"].endswith("\n\nAssistant:") and ours["prompt"] + ours["chosen"] == row["chosen"]
        moved += layouts.trl_split_differs(row)
    assert moved > 0  # real pairs whose answers start alike: TRL's cut takes their first words into the prompt
    rep = check_data(str(REAL / "hh-rlhf-harmless-base-test.jsonl"))
    f = next(f for f in rep["findings"] if f["id"] == "foreign_layout")
    assert f["count"] == moved and f["severity"] == "warning"


# ------------------------------------------------------------------ row findings: each fires on its problem only
GOOD = [{"prompt": f"question {i}", "chosen": f"answer {i}", "rejected": f"a worse reply {i}"} for i in range(40)]


@pytest.mark.parametrize("fid,rows,config", [
    ("empty_completion", GOOD + [{"prompt": "q", "chosen": " ", "rejected": "x"}], None),
    ("identical_pair", GOOD + [{"prompt": "q", "chosen": "same", "rejected": "same"}], None),
    ("duplicate_pairs", GOOD + [GOOD[3]], None),
    ("length_bias", [{"prompt": f"q{i}", "chosen": "a long and careful answer " * 3, "rejected": "short"}
                     for i in range(30)], None),
    ("few_pairs", GOOD, {"per_device_train_batch_size": 16, "gradient_accumulation_steps": 4}),
    ("tied_scores", [{**r, "score_chosen": 7.0, "score_rejected": 7.0} for r in GOOD], None),
    ("missing_columns", [{"question": r["prompt"], "response_j": r["chosen"], "response_k": r["rejected"]}
                         for r in GOOD], None),
])
def test_each_row_finding_fires_on_its_problem_and_not_on_clean_data(tmp_path, fid, rows, config):
    clean = check_data(write_jsonl(tmp_path / "clean.jsonl", GOOD), config={"per_device_train_batch_size": 1})
    assert clean["verdict"] == "clean" and ids(clean) == set(), clean["findings"]
    rep = check_data(write_jsonl(tmp_path / "bad.jsonl", rows), config=config)
    assert fid in ids(rep) and rep["verdict"] == "problems"
    f = next(f for f in rep["findings"] if f["id"] == fid)
    assert f["remedy"] and f["explanation"]
    if fid in ("empty_completion", "identical_pair", "duplicate_pairs"):
        assert f["rows"] == [41]  # the row number as the file counts it
    if fid == "missing_columns":
        assert f["mapping"] == {"prompt": "question", "chosen": "response_j", "rejected": "response_k"}
        out = convert_data(str(tmp_path / "bad.jsonl"), str(tmp_path / "mapped.jsonl"),
                           mapping="prompt=question,chosen=response_j,rejected=response_k")
        assert out["rows"] == 40 and check_data(str(tmp_path / "mapped.jsonl"))["verdict"] == "clean"


def test_unreadable_and_unusable_inputs_are_one_clear_error(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{oops\n')
    with pytest.raises(PrefpilotError, match=r"line 2 is not valid JSON"):
        check_data(str(tmp_path / "bad.jsonl"))
    with pytest.raises(PrefpilotError, match="does not exist"):
        check_data(str(tmp_path / "missing.jsonl"))
    with pytest.raises(PrefpilotError, match="exists; choose another --out"):
        write_jsonl(tmp_path / "o.jsonl", GOOD)
        convert_data(str(tmp_path / "o.jsonl"), str(tmp_path / "o.jsonl"))
    with pytest.raises(PrefpilotError, match="is the input file"):
        convert_data(str(tmp_path / "o.jsonl"), str(tmp_path / "o.jsonl"), overwrite=True)
    assert json.loads((tmp_path / "o.jsonl").read_text().splitlines()[0]) == GOOD[0]  # never lost
    r = subprocess.run([*CLI, "data", "convert", str(tmp_path / "o.jsonl"), "--out", str(tmp_path / "x.jsonl"),
                        "--map", "prompt"], capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 1 and "prompt=COLUMN" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------ with a model: tokens as TRL counts them
def test_token_findings_use_the_models_tokenizer_and_template(tmp_path, tiny):
    long_prompt = " ".join(["2 + 2 ="] * 60)
    rows = GOOD[:20] + [{"prompt": long_prompt, "chosen": "4", "rejected": "5"},
                        {"prompt": "q", "chosen": "7 * 7 = 49 " * 20, "rejected": "no"}]
    rep = check_data(write_jsonl(tmp_path / "d.jsonl", rows), model=str(tiny), max_length=64)
    found = {f["id"]: f for f in rep["findings"]}
    assert found["prompt_fills_max_length"]["rows"] == [21]
    assert found["truncated"]["rows"] == [22]
    assert rep["tokens"]["max_length"] == 64 and rep["length"]["unit"] == "tokens"
    clean = check_data(write_jsonl(tmp_path / "c.jsonl", GOOD), model=str(tiny), max_length=64)
    assert not {"prompt_fills_max_length", "truncated"} & ids(clean, ("error", "warning", "info"))
    # conversational rows and a tokenizer without a chat template: TRL cannot render them
    notpl = tmp_path / "notpl"
    import shutil
    shutil.copytree(tiny, notpl)
    cfg = json.loads((notpl / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (notpl / "tokenizer_config.json").write_text(json.dumps(cfg))
    for extra in notpl.glob("chat_template*"):
        extra.unlink()
    conv = [{"prompt": [{"role": "user", "content": r["prompt"]}], "chosen": [{"role": "assistant", "content":
             r["chosen"]}], "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in GOOD]
    rep = check_data(write_jsonl(tmp_path / "conv.jsonl", conv), model=str(notpl), max_length=64)
    assert "no_chat_template" in ids(rep)
    assert "no_chat_template" not in ids(check_data(str(tmp_path / "conv.jsonl"), model=str(tiny), max_length=64))


def test_score_caches_reference_logps_equal_to_trls_precompute_and_training_reuses_them(tmp_path, tiny, cache):
    """The values a run would compute itself (TRL's own precompute pass) match the cached ones, and `prefpilot
    train` with precompute_ref_log_probs reads them instead of running that pass."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from prefpilot import rundir
    from prefpilot.train.data import read_rows
    from prefpilot.train.trainer import train
    data = write_jsonl(tmp_path / "d.jsonl", read_rows(str(ROOT / "backend/prefpilot/data/arith-prefs.test.jsonl")))
    rep = check_data(data, model=str(tiny), max_length=64, score=True, out_dir=tmp_path / "plots")
    s = rep["score"]
    assert s["pairs"] == rep["usable_pairs"] and Path(s["histogram"]).is_file()
    assert 0 <= s["already_preferred"]["summed"] <= 1 and "already_preferred" in {f["id"] for f in rep["findings"]}
    rows = read_rows(data)
    cached = refcache.lookup(refcache.fingerprint(str(tiny), 64), rows)
    assert cached is not None and len(cached[0]) == len(rows)
    t = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny),
                   args=DPOConfig(output_dir=str(tmp_path / "o"), precompute_ref_log_probs=True, max_length=64,
                                  use_cpu=True, report_to=[], per_device_train_batch_size=4),
                   train_dataset=Dataset.from_list(rows), processing_class=AutoTokenizer.from_pretrained(tiny))
    for ours, trls in zip(cached, (t.train_dataset["ref_chosen_logps"], t.train_dataset["ref_rejected_logps"])):
        assert max(abs(a - b) for a, b in zip(ours, trls)) < 5e-3  # float32, batched differently
    # another max_length is another key: nothing reused
    assert refcache.lookup(refcache.fingerprint(str(tiny), 128), rows) is None
    status = train({"model_name_or_path": str(tiny), "dataset_path": data, "max_steps": 2, "max_length": 64,
                    "per_device_train_batch_size": 2, "precompute_ref_log_probs": True, "save_strategy": "no",
                    "eval_holdout": False, "learning_rate": 1e-3}, tmp_path / "run", progress=False)
    assert status["state"] == "completed"
    assert rundir.read_status(tmp_path / "run")["ref_logps_reused"] == len(rows)
    assert rundir.read_metrics(tmp_path / "run")[0]["loss"] == pytest.approx(0.6931, abs=0.01)


@pytest.mark.parametrize("name", ["llamafactory-dpo_en_demo.json", "hh-rlhf-harmless-base-test.jsonl",
                                  "ultrafeedback-binarized-row0.jsonl"])
def test_converted_real_data_trains_unchanged(tmp_path, tiny, name):
    """`data convert` output goes to `prefpilot train` as it is (the tiny model has a chat template)."""
    out = tmp_path / "converted.jsonl"
    convert_data(str(REAL / name), str(out))
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model_name_or_path: {tiny}\ndataset_path: {out}\nmax_steps: 2\nmax_length: 64\n"
                   "per_device_train_batch_size: 1\nsave_strategy: 'no'\nuse_cpu: true\nlearning_rate: 1.0e-3\n")
    r = subprocess.run([*CLI, "train", str(cfg), "--run-dir", str(tmp_path / "run")], capture_output=True, text=True,
                       env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "completed"


# ------------------------------------------------------------------ adapters: CLI, validate, plan, MCP
def test_cli_json_object_and_exit_status(tmp_path):
    r = subprocess.run([*CLI, "data", "check", str(REAL / "llamafactory-dpo_en_demo.json"), "--json"],
                       capture_output=True, text=True, env=ENV, timeout=120)
    rep = json.loads(r.stdout)
    assert r.returncode == 3 and {"format", "rows", "findings"} <= set(rep) and rep["format"] == "sharegpt"
    r = subprocess.run([*CLI, "data", "check", "builtin:arith-prefs"], capture_output=True, text=True, env=ENV,
                       timeout=120)
    assert r.returncode == 0 and "standard layout" in r.stdout


def test_validate_reports_data_findings_without_importing_torch(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", GOOD + [GOOD[0], {"prompt": "q", "chosen": "s", "rejected": "s"}])
    code = ("import sys, json; from prefpilot.config.validate import validate; "
            f"r = validate({{'model_name_or_path': 'HuggingFaceTB/SmolLM2-135M-Instruct', 'dataset_path': {data!r}}}); "
            "print(json.dumps([w['code'] for w in r['warnings']])); "
            "print('torch' in sys.modules or 'transformers' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    codes, heavy = r.stdout.splitlines()[-2:]
    assert {"data_duplicate_pairs", "data_identical_pair"} <= set(json.loads(codes)) and heavy == "False"


def test_validate_and_plan_point_foreign_layouts_at_convert(tmp_path):
    from prefpilot.config.validate import validate
    from prefpilot.plan import count_pairs
    src = str(REAL / "llamafactory-dpo_en_demo.json")
    r = validate({"model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "dataset_path": src})
    err = next(e for e in r["errors"] if e["path"] == "/dataset_path")
    assert "prefpilot data convert" in err["suggestion"] and "sharegpt" in err["suggestion"]
    n, why, _ = count_pairs(str(REAL / "hh-rlhf-harmless-base-test.jsonl"))
    assert n == 60 and "hh_rlhf layout" in why


def test_mcp_check_and_convert_dataset_through_the_sdk_client(tmp_path):
    import shutil

    from test_mcp import call, session, text
    shutil.copy(REAL / "llamafactory-dpo_en_demo.json", tmp_path / "lf.json")
    with session(tmp_path) as (portal, client):
        r = call(portal, client, "check_dataset", {"data": "lf.json"})
        assert not r.is_error, text(r)
        assert r.structured_content["format"] == "sharegpt"
        r = call(portal, client, "convert_dataset", {"data": "lf.json", "out": "lf-trl.jsonl"})
        assert not r.is_error and r.structured_content["rows"] == 40, text(r)
        r = call(portal, client, "check_dataset", {"data": "lf-trl.jsonl"})
        assert r.structured_content["format"] == "conversational"
        r = call(portal, client, "check_dataset", {"data": "/etc/passwd"})
        assert r.is_error and "outside the workspace" in text(r)
        r = call(portal, client, "convert_dataset", {"data": "lf.json", "out": "../escape.jsonl"})
        assert r.is_error and "outside the workspace" in text(r)
    assert (tmp_path / "lf-trl.jsonl").is_file() and not (tmp_path.parent / "escape.jsonl").exists()


def test_alpaca_ranking_rows_in_llamafactorys_documented_format(tmp_path):
    """LLaMA-Factory's alpaca preference layout (its data/README.md: instruction, input, chosen, rejected, optional
    system and history); no public file of it is small enough to ship, so these rows follow that format."""
    rows = [{"instruction": f"Add {i} and 2.", "input": "", "chosen": f"{i + 2}", "rejected": f"{i + 3}"}
            for i in range(5)]
    rows.append({"instruction": "And now times 3?", "input": "", "chosen": "21", "rejected": "20",
                 "system": "You are a calculator.", "history": [["Add 5 and 2.", "7"]]})
    rep = check_data(write_jsonl(tmp_path / "a.jsonl", rows))
    assert rep["format"] == "alpaca" and rep["usable_pairs"] == 6
    convert_data(str(tmp_path / "a.jsonl"), str(tmp_path / "o.jsonl"))
    out = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert out[0] == {"prompt": "Add 0 and 2.", "chosen": "2", "rejected": "3"}
    assert [m["role"] for m in out[5]["prompt"]] == ["system", "user", "assistant", "user"]
    assert out[5]["chosen"] == [{"role": "assistant", "content": "21"}]


def test_already_preferred_warns_only_when_the_reference_ranks_nearly_every_pair_right():
    from prefpilot.datacheck.model import score_finding

    def s(summed, per_token):
        return {"pairs": 100, "already_preferred": {"summed": summed, "per_token": per_token},
                "margin_median": {"summed": 3.0, "per_token": 0.2}}
    assert score_finding(s(0.95, 0.93))["severity"] == "warning"
    assert score_finding(s(0.95, 0.6))["severity"] == "info"  # long chosen answers win the sum, not the average
    assert score_finding(s(0.5, 0.5))["severity"] == "info"
