"""The planner picks published rows, explains itself, and returns configs the validator accepts."""
import pytest

from prefpilot import validate
from prefpilot.errors import PrefpilotError
from prefpilot.plan import plan
from prefpilot.skills import load_table


@pytest.mark.parametrize("method,model,row", [
    ("simpo", "meta-llama/Meta-Llama-3-8B-Instruct", "simpo-llama3-8b-instruct"),
    ("simpo", "mistralai/Mistral-7B-Instruct-v0.2", "simpo-mistral-7b-instruct"),
    ("simpo", "google/gemma-2-9b-it", "simpo-gemma2-9b-it"),
    ("dpo", "meta-llama/Meta-Llama-3-8B-Instruct", "dpo-llama3-8b-instruct"),
    ("dpo", "HuggingFaceH4/zephyr-7b-sft-full", "dpo-mistral-7b-base"),
])
def test_nearest_published_row(method, model, row):
    p = plan(method=method, model=model, gpu_memory_gb=80, num_gpus=8)
    assert p["table_row"]["id"] == row and row in p["rationale"][0]
    r = next(x for x in load_table(method)["rows"] if x["id"] == row)
    assert p["config"]["beta"] == r["beta"] and p["config"]["learning_rate"] == r["learning_rate"]
    assert validate(p["config"])["valid"]


def test_memory_savers_turn_on_in_order_when_needed():
    roomy = plan(method="dpo", model="meta-llama/Meta-Llama-3-8B-Instruct", gpu_memory_gb=80, num_gpus=8)
    assert roomy["memory_savers"] == [] and roomy["config"]["activation_checkpointing"] is False
    tight = plan(method="dpo", model="meta-llama/Meta-Llama-3-8B-Instruct", gpu_memory_gb=24)
    names = [s["saver"] for s in tight["memory_savers"]]
    assert names[0] == "activation_checkpointing" and "lora" in names
    assert tight["config"]["use_peft"] and tight["config"]["learning_rate"] == pytest.approx(7e-6)
    assert tight["estimate"]["total_gb"] <= 24 * 0.85
    with pytest.raises(PrefpilotError, match="does not fit"):
        plan(method="dpo", model="meta-llama/Meta-Llama-3-70B", gpu_memory_gb=8)


def test_small_dataset_shrinks_the_batch_and_cpu_gets_fp32():
    p = plan(method="dpo", model="HuggingFaceTB/SmolLM2-135M-Instruct", dataset_size=320,
             gpu_memory_gb=None, num_gpus=0)
    c = p["config"]
    total = c["per_device_train_batch_size"] * c["gradient_accumulation_steps"]
    assert 320 / total >= 20 and c["bf16"] is False and validate(c)["valid"]


def test_simpo_plan_has_no_reference_and_maps_gamma():
    p = plan(method="simpo", model="meta-llama/Meta-Llama-3-8B-Instruct", gpu_memory_gb=80)
    n = validate(p["config"])["normalized"]
    assert n["simpo_gamma"] == pytest.approx(2.5 * 0.55) and p["estimate"]["parts_gb"]["reference_model"] == 0


def test_bad_method():
    with pytest.raises(PrefpilotError):
        plan(method="ppo", model="x")


def test_plan_counts_the_pairs_it_is_given(tmp_path):
    from prefpilot.plan import plan
    p = plan(dataset_path="builtin:tone-prefs")  # 192 pairs: a batch of 128 would be 1 step per epoch
    assert any("counted 192 usable pairs in builtin:tone-prefs (standard layout)" in r for r in p["rationale"])
    total = p["config"]["per_device_train_batch_size"] * p["config"]["gradient_accumulation_steps"]
    assert 192 // total >= 20
    tiny = tmp_path / "few.jsonl"
    tiny.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n' * 30)
    p = plan(dataset_path=str(tiny))
    assert any("counted 30 usable pairs" in r for r in p["rationale"]) and any("warning" in r for r in p["rationale"])
    # rows TRL cannot use are not pairs to plan the batch for
    tiny.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n' * 30 + '{"prompt": "p", "chosen": "", "rejected": "b"}\n')
    p = plan(dataset_path=str(tiny), dataset_size=None)
    assert any("counted 30 usable pairs" in r and "1 of 31 rows unusable" in r for r in p["rationale"])


# The split sizes a hub dataset leaves on a machine that has loaded it, in the formats the hub and `datasets` write
# (the numbers are ultrafeedback_binarized's: 61,135 train_prefs pairs, 2,000 test_prefs).
CARD = """---
dataset_info:
  features:
  - name: prompt
    dtype: string
  splits:
  - name: train_prefs
    num_bytes: 405688662
    num_examples: 61135
  - name: test_prefs
    num_bytes: 13161585
    num_examples: 2000
configs:
- config_name: default
  data_files:
  - split: train_prefs
    path: data/train_prefs-*
---
# Dataset Card
"""


def test_plan_counts_a_hub_set_from_the_local_cache_without_the_network(tmp_path, monkeypatch):
    import json

    from prefpilot.plan import count_pairs, plan
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    repo = "HuggingFaceH4/ultrafeedback_binarized"
    n, why, _ = count_pairs(repo)
    assert n is None and "cache" in why  # nothing cached: says so, plans with the papers' batch
    snap = tmp_path / "hub/datasets--HuggingFaceH4--ultrafeedback_binarized/snapshots/3949bf5f"
    snap.mkdir(parents=True)
    (snap / "README.md").write_text(CARD)
    n, why, _ = count_pairs(repo)
    assert n == 61135 and "train_prefs" in why and "dataset card" in why  # train -> the one train_* split
    info = tmp_path / "datasets/HuggingFaceH4___ultrafeedback_binarized/default/0.0.0/abc123/dataset_info.json"
    info.parent.mkdir(parents=True)
    info.write_text(json.dumps({"splits": {"train_prefs": {"name": "train_prefs", "num_examples": 60000},
                                           "test_prefs": {"name": "test_prefs", "num_examples": 2000}}}))
    assert count_pairs(repo)[0] == 60000  # what load_dataset itself wrote wins over the card
    p = plan(dataset_path=repo)
    assert any("counted 60000 pairs" in r for r in p["rationale"])
    # a hub id is TRL's dataset_name, with the split the set really has
    assert p["config"]["dataset_name"] == repo and "dataset_path" not in p["config"]
    assert p["config"]["dataset_train_split"] == "train_prefs"
    (snap / "README.md").write_text("---\n: [broken\n---\n")
    info.write_text("{not json")
    assert count_pairs(repo)[0] is None  # unreadable metadata is not counted, and nothing raises
