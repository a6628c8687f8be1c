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
    assert any("counted 192 pairs" in r for r in p["rationale"])
    total = p["config"]["per_device_train_batch_size"] * p["config"]["gradient_accumulation_steps"]
    assert 192 // total >= 20
    tiny = tmp_path / "few.jsonl"
    tiny.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n' * 30)
    p = plan(dataset_path=str(tiny))
    assert any("counted 30 pairs" in r for r in p["rationale"]) and any("warning" in r for r in p["rationale"])
