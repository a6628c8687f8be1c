"""The validator: every rule trips on a config that breaks it and stays quiet on one that does not."""
import dataclasses
import json
import subprocess
import sys

import jsonschema
import pytest
import yaml

from prefpilot.config import generate
from prefpilot.config.validate import REMOVED_KEYS, schema, validate
from skill_docs import blocks

# max_length 512: full-length SimPO batches of 1024 tokens need ~20 GB of logits on a CPU, which would make
# rule tests depend on the RAM of the machine running them.
BASE = {"model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "dataset_path": "builtin:arith-prefs", "max_length": 512}
GPU_A100 = {"gpu_memory_gb": 80, "num_gpus": 1, "bf16_supported": True}
GPU_T4 = {"gpu_memory_gb": 16, "num_gpus": 1, "bf16_supported": False}


def codes(report, kind="errors"):
    return {(f["path"], f["code"]) for f in report[kind]}


# (name, config that trips the rule, (path, code), config that does not, where the finding is reported)
CASES = [
    ("typo", {"learnig_rate": 1e-6}, ("/learnig_rate", "unknown_key"), {"learning_rate": 1e-6}, "errors"),
    ("removed max_prompt_length", {"max_prompt_length": 256}, ("/max_prompt_length", "removed_key"), {"max_length": 512}, "errors"),
    ("removed max_completion_length", {"max_completion_length": 256}, ("/max_completion_length", "removed_key"), {}, "errors"),
    ("removed rpo_alpha", {"rpo_alpha": 1.0}, ("/rpo_alpha", "removed_key"),
     {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 1.0]}, "errors"),
    ("removed reference_free", {"reference_free": True}, ("/reference_free", "removed_key"), {}, "errors"),
    ("renamed aot_pair", {"loss_type": "aot_pair"}, ("/loss_type", "renamed_value"), {"loss_type": "aot"}, "errors"),
    ("renamed torch_dtype", {"torch_dtype": "bfloat16"}, ("/torch_dtype", "renamed_key"), {"dtype": "float32"}, "errors"),
    ("beta > 0", {"beta": 0}, ("/beta", "range"), {"beta": 0.1}, "errors"),
    ("robust label smoothing", {"loss_type": "robust", "label_smoothing": 0.5}, ("/label_smoothing", "range"),
     {"loss_type": "robust", "label_smoothing": 0.1}, "errors"),
    ("robust smoothing as list", {"loss_type": ["sigmoid", "robust"], "label_smoothing": 0.7}, ("/label_smoothing", "range"),
     {"loss_type": ["sigmoid"], "label_smoothing": 0.7}, "errors"),
    ("exo_pair needs eps", {"loss_type": "exo_pair"}, ("", "required"),
     {"loss_type": "exo_pair", "label_smoothing": 0.001}, "errors"),
    ("ld_alpha range", {"ld_alpha": 1.5}, ("/ld_alpha", "range"), {"ld_alpha": 0.5}, "errors"),
    ("loss_weights length", {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0]}, ("/loss_weights", "length_mismatch"),
     {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]}, "errors"),
    ("batch size", {"per_device_train_batch_size": 0}, ("/per_device_train_batch_size", "range"),
     {"per_device_train_batch_size": 1}, "errors"),
    ("grad accumulation", {"gradient_accumulation_steps": 0}, ("/gradient_accumulation_steps", "range"),
     {"gradient_accumulation_steps": 2}, "errors"),
    ("discopop tau", {"loss_type": "discopop", "discopop_tau": 0}, ("/discopop_tau", "range"),
     {"loss_type": "discopop", "discopop_tau": 0.05}, "errors"),
    ("unknown loss", {"loss_type": "sigmoidd"}, ("/loss_type", "unknown_loss_type"), {"loss_type": "sigmoid"}, "errors"),
    ("unknown loss in list", {"loss_type": ["sigmoid", "nope"]}, ("/loss_type/1", "unknown_loss_type"),
     {"loss_type": ["sigmoid", "ipo"]}, "errors"),
    ("type", {"beta": "high"}, ("/beta", "type"), {"beta": 0.2}, "errors"),
    ("sync_ref_model + peft", {"sync_ref_model": True, "use_peft": True}, ("/sync_ref_model", "incompatible"),
     {"sync_ref_model": True}, "errors"),
    ("sync_ref_model + precompute", {"sync_ref_model": True, "precompute_ref_log_probs": True},
     ("/sync_ref_model", "incompatible"), {"precompute_ref_log_probs": True}, "errors"),
    ("padding_free is ignored by TRL 1.16 with any attention", {"padding_free": True},
     ("/padding_free", "no_effect"), {"attn_implementation": "flash_attention_2", "hardware": GPU_A100}, "warnings"),
    ("padding_free with flash is ignored too", {"padding_free": True, "attn_implementation": "flash_attention_2",
                                                "hardware": GPU_A100},
     ("/padding_free", "no_effect"), {"attn_implementation": "flash_attention_2", "hardware": GPU_A100}, "warnings"),
    ("simpo option on dpo", {"simpo_gamma": 0.5}, ("/simpo_gamma", "wrong_method"), {}, "errors"),
    ("simpo paper option on dpo", {"gamma_beta_ratio": 0.5}, ("/gamma_beta_ratio", "wrong_method"), {}, "errors"),
    ("dpo option on simpo", {"method": "simpo", "ld_alpha": 0.5}, ("/ld_alpha", "wrong_method"), {"method": "simpo"}, "errors"),
    ("simpo loss on dpo", {"loss_type": "simpo"}, ("/loss_type", "wrong_method"), {}, "errors"),
    ("bf16 on T4", {"bf16": True, "hardware": GPU_T4}, ("/bf16", "hardware"), {"bf16": True, "hardware": GPU_A100}, "errors"),
    ("f-divergence with bco", {"loss_type": "bco_pair", "f_divergence_type": "js_divergence"},
     ("/f_divergence_type", "incompatible"), {"loss_type": "sigmoid", "f_divergence_type": "js_divergence"}, "errors"),
    ("WPO with aot", {"loss_type": "aot", "use_weighting": True}, ("/use_weighting", "incompatible"),
     {"loss_type": "sigmoid", "use_weighting": True}, "errors"),
    ("lora on lm_head", {"use_peft": True, "lora_target_modules": ["q_proj", "lm_head"]},
     ("/lora_target_modules", "incompatible"), {"use_peft": True, "lora_target_modules": ["q_proj"]}, "errors"),
    ("precompute with streaming", {"precompute_ref_log_probs": True, "streaming": True},
     ("/precompute_ref_log_probs", "incompatible"), {"precompute_ref_log_probs": True}, "errors"),
    ("4bit without peft", {"load_in_4bit": True, "hardware": GPU_A100}, ("/load_in_4bit", "incompatible"),
     {"load_in_4bit": True, "use_peft": True, "hardware": GPU_A100}, "errors"),
    ("missing dataset", {"dataset_path": None}, ("/dataset_path", "required"), {}, "errors"),
    ("missing dataset file", {"dataset_path": "/nonexistent/data.jsonl"}, ("/dataset_path", "dataset_not_found"), {}, "errors"),
    ("simpo gamma ratio negative", {"method": "simpo", "gamma_beta_ratio": -0.1}, ("/gamma_beta_ratio", "range"),
     {"method": "simpo", "gamma_beta_ratio": 0.5}, "errors"),
    # warnings: legal but suspicious
    ("dpo lr high", {"learning_rate": 1e-4}, ("/learning_rate", "learning_rate_high"), {"learning_rate": 5e-7}, "warnings"),
    ("simpo beta low", {"method": "simpo", "beta": 0.1}, ("/beta", "beta_low"), {"method": "simpo", "beta": 2.5}, "warnings"),
    ("dpo beta high", {"beta": 5.0}, ("/beta", "beta_high"), {"beta": 0.5}, "warnings"),
    ("ipo large lr", {"loss_type": "ipo", "learning_rate": 1e-2}, ("/learning_rate", "ipo_learning_rate"),
     {"loss_type": "ipo", "learning_rate": 1e-6}, "warnings"),
    ("simpo gamma high", {"method": "simpo", "beta": 2.0, "gamma_beta_ratio": 5.0}, ("/simpo_gamma", "gamma_high"),
     {"method": "simpo", "beta": 2.0, "gamma_beta_ratio": 0.5}, "warnings"),
    ("bf16 on cpu", {"bf16": True, "hardware": {"gpu_memory_gb": None, "num_gpus": 0}}, ("/bf16", "hardware"),
     {"bf16": False, "hardware": {"gpu_memory_gb": None, "num_gpus": 0}}, "warnings"),
    ("lora keys without peft", {"lora_r": 8}, ("/use_peft", "no_effect"), {"lora_r": 8, "use_peft": True}, "warnings"),
]


@pytest.mark.parametrize("name,bad,expected,good,kind", CASES, ids=[c[0] for c in CASES])
def test_rule(name, bad, expected, good, kind):
    r = validate({**BASE, **bad})
    assert expected in codes(r, kind), (name, r[kind])
    if kind == "errors":
        assert not r["valid"]
    ok = validate({**BASE, **good})
    assert expected not in codes(ok, kind), (name, ok[kind])
    assert ok["valid"], (name, ok["errors"])


def test_every_finding_is_actionable():
    r = validate({**BASE, "learnig_rate": 1, "max_prompt_length": 3, "beta": -1, "loss_type": "x"})
    for f in r["errors"]:
        assert set(f) == {"path", "code", "message", "suggestion"} and f["message"] and f["path"].startswith("/")
    typo = next(f for f in r["errors"] if f["path"] == "/learnig_rate")
    assert "learning_rate" in typo["message"]
    assert "max_length" in next(f for f in r["errors"] if f["path"] == "/max_prompt_length")["message"]


def test_not_a_mapping_and_bad_method():
    assert validate([1, 2])["errors"][0]["code"] == "not_a_mapping"
    assert validate({"method": "ppo"})["errors"][0]["path"] == "/method"


def test_removed_keys_are_really_gone_from_installed_trl():
    from trl import DPOConfig, ModelConfig, ScriptArguments
    installed = {f.name for c in (DPOConfig, ModelConfig, ScriptArguments) for f in dataclasses.fields(c)}
    assert not installed & set(REMOVED_KEYS), installed & set(REMOVED_KEYS)


def test_trl_cli_config_works_unchanged():
    """A config written for `trl dpo --config` (TRL's own keys only) validates."""
    trl_cli = yaml.safe_load("""
model_name_or_path: Qwen/Qwen2.5-0.5B-Instruct
dataset_name: trl-lib/ultrafeedback_binarized
dataset_train_split: train
learning_rate: 5.0e-7
num_train_epochs: 1
per_device_train_batch_size: 2
gradient_accumulation_steps: 8
gradient_checkpointing: true
eval_strategy: steps
eval_steps: 50
output_dir: Qwen2-0.5B-DPO
use_peft: true
lora_r: 32
lora_alpha: 16
lora_target_modules: all-linear
""")
    r = validate({**trl_cli, "hardware": GPU_A100})
    assert r["valid"], r["errors"]


def test_simpo_normalises_to_cpo_names():
    r = validate({**BASE, "method": "simpo", "beta": 2.5, "gamma_beta_ratio": 0.55, "sft_weight": 0.1, "loss_type": "hinge"})
    n = r["normalized"]
    assert r["valid"] and n["loss_type"] == "simpo" and n["simpo_loss"] == "hinge"
    assert n["simpo_gamma"] == pytest.approx(1.375) and n["cpo_alpha"] == 0.1 and "gamma_beta_ratio" not in n
    n = validate({**BASE, "method": "simpo"})["normalized"]
    assert n["beta"] == 2.0 and n["simpo_gamma"] == 1.0 and n["cpo_alpha"] == 0.0
    n = validate({**BASE, "method": "simpo", "loss_type": "simpo", "simpo_gamma": 0.7, "cpo_alpha": 0.0, "beta": 2.0})
    assert n["valid"] and n["normalized"]["simpo_gamma"] == 0.7


def test_memory_estimate_accounts_for_reference_peft_and_checkpointing():
    big = {**BASE, "model_name_or_path": "meta-llama/Meta-Llama-3-8B", "hardware": GPU_A100,
           "per_device_train_batch_size": 2, "max_length": 1024, "dtype": "bfloat16", "bf16": True}
    dpo = validate(big)["estimate"]
    simpo = validate({**big, "method": "simpo"})["estimate"]
    pre = validate({**big, "precompute_ref_log_probs": True})["estimate"]
    lora = validate({**big, "use_peft": True})["estimate"]
    qlora = validate({**big, "use_peft": True, "load_in_4bit": True})["estimate"]
    no_ckpt = validate({**big, "gradient_checkpointing": False})["estimate"]
    assert dpo["parts_gb"]["reference_model"] == pytest.approx(16.06, rel=0.01)
    assert simpo["parts_gb"]["reference_model"] == 0 and pre["parts_gb"]["reference_model"] == 0
    assert lora["parts_gb"]["reference_model"] == 0 and lora["total_gb"] < dpo["total_gb"] / 3
    assert qlora["parts_gb"]["weights"] < lora["parts_gb"]["weights"] / 3
    assert no_ckpt["parts_gb"]["activations"] > 5 * dpo["parts_gb"]["activations"]
    r = validate(big)
    assert ("/per_device_train_batch_size", "out_of_memory") in codes(r)  # full 8B DPO on one 80 GB GPU
    assert r["valid"] is False
    assert validate({**big, "use_peft": True})["valid"]


def test_model_size_from_config_on_disk(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 1000,
                                                      "intermediate_size": 128, "num_attention_heads": 4}))
    est = validate({**BASE, "model_name_or_path": str(tmp_path)})["estimate"]
    assert est["model_size_source"].endswith("config.json") and 100_000 < est["model_params"] < 200_000
    unknown = validate({**BASE, "model_name_or_path": "someone/mystery-model"})["estimate"]
    assert unknown["known"] is False and "model_params" in unknown["reason"]
    assert validate({**BASE, "model_name_or_path": "someone/mystery-model", "model_params": 3e9})["estimate"]["known"]


# ----------------------------------------------------------------------------- schemas
@pytest.mark.parametrize("method", ["dpo", "simpo"])
def test_schema_is_valid_draft_2020_12(method):
    s = schema(method)
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(s)


def test_schemas_are_current_against_installed_trl():
    assert generate.generate(check=True) == [], "run `prefpilot schemas generate`"


def test_schema_covers_every_dpoconfig_field():
    from trl import DPOConfig
    props = schema("dpo")["properties"]
    missing = [f.name for f in dataclasses.fields(DPOConfig) if not f.name.startswith("_") and f.name not in props]
    assert missing == []
    assert "TRL" not in props["beta"]["description"] or props["beta"]["description"]  # help strings are carried


# ----------------------------------------------------------------------------- skill snippets
SNIPPETS = blocks("yaml")


@pytest.mark.parametrize("file,tag,body,expect", SNIPPETS, ids=[f"{s[0]}#{i}" for i, s in enumerate(SNIPPETS)])
def test_skill_config_snippets_validate(file, tag, body, expect):
    snippet = yaml.safe_load(body)
    assert isinstance(snippet, dict), f"{file}: a config snippet must be a mapping"
    # Snippets are written for a GPU user: check them against one, not against whatever runs the tests.
    r = validate({**BASE, "hardware": GPU_A100, **snippet})
    if expect:
        assert expect in {f["code"] for f in r["errors"]}, (file, r["errors"])
    else:
        assert r["valid"], (file, body, r["errors"])


def test_there_are_snippets_for_every_loss_type():
    from test_skill_formulas import installed_loss_types
    shown = set()
    for file, _, body, expect in SNIPPETS:
        lt = (yaml.safe_load(body) or {}).get("loss_type")
        if not expect and lt:
            shown |= set(lt if isinstance(lt, list) else [lt])
    assert installed_loss_types() <= shown


# ----------------------------------------------------------------------------- light and fast
def test_validate_imports_no_torch_and_is_fast():
    code = ("import sys, time; from prefpilot import validate; from prefpilot.plan import plan\n"
            f"cfg = {BASE!r}\n"
            "validate(cfg); ts = []\n"
            "for _ in range(30):\n    t = time.perf_counter(); validate(cfg); ts.append(time.perf_counter() - t)\n"
            "plan(method='simpo', model='meta-llama/Meta-Llama-3-8B-Instruct', gpu_memory_gb=80)\n"
            "heavy = [m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets') if m in sys.modules]\n"
            "print(sorted(ts)[len(ts)//2], heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(" ", 1)
    assert out[1].strip() == "[]", f"heavy modules imported: {out[1]}"
    assert float(out[0]) < 0.05


# ----------------------------------------------------------------------------- CLI
def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "prefpilot.cli", *args], capture_output=True, text=True)


def test_cli_validate_exit_codes(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({**BASE, "learning_rate": 1e-4}))
    p = run_cli("validate", str(good), "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["warnings"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**BASE, "learnig_rate": 1e-6}))
    p = run_cli("validate", str(bad))
    assert p.returncode == 1 and "did you mean `learning_rate`" in p.stdout and "Traceback" not in p.stderr
    for content, rc in (("a: [\n", 2), ("", 1), ("- 1\n- 2\n", 1)):
        f = tmp_path / "x.yaml"
        f.write_text(content)
        p = run_cli("validate", str(f))
        assert p.returncode == rc and "Traceback" not in p.stdout + p.stderr, (content, p.stdout, p.stderr)
    assert run_cli("validate", str(tmp_path / "missing.yaml")).returncode == 2


def test_cli_plan_writes_a_valid_config(tmp_path):
    out = tmp_path / "plan.yaml"
    p = run_cli("plan", "--method", "simpo", "--model", "google/gemma-2-9b-it", "--gpu-memory-gb", "80",
                "--num-gpus", "8", "-o", str(out))
    assert p.returncode == 0 and "simpo-gemma2-9b-it" in p.stdout
    assert run_cli("validate", str(out)).returncode == 0


def test_normalised_simpo_config_validates_again_and_keeps_hinge():
    # a run dir's config.yaml is the normalised config; resume validates it a second time
    first = validate({"method": "simpo", "loss_type": "hinge", "model_name_or_path": "m", "dataset_path": "d.jsonl"},
                     complete=False)
    again = validate(first["normalized"], complete=False)
    assert again["valid"], again["errors"]
    assert again["normalized"]["simpo_loss"] == "hinge" and again["normalized"]["loss_type"] == "simpo"
    assert again["normalized"]["simpo_gamma"] == first["normalized"]["simpo_gamma"]


def test_typos_inside_hardware_are_errors_and_a_second_gamma_is_a_warning(tmp_path):
    base = "model_name_or_path: HuggingFaceTB/SmolLM2-135M-Instruct\ndataset_path: builtin:arith-prefs\n"
    f = tmp_path / "hw.yaml"
    f.write_text(base + "hardware: {gpu_mem_gb: 80, num_gpu: 8}\n")
    r = run_cli("validate", str(f))
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "/hardware/gpu_mem_gb" in out and "did you mean `gpu_memory_gb`" in out
    assert "/hardware/num_gpu" in out and "`num_gpus`" in out
    f.write_text(base + "hardware: {gpu_memory_gb: 80, num_gpus: 8}\n")
    assert run_cli("validate", str(f)).returncode == 0  # the right names still pass
    g = tmp_path / "g.yaml"
    g.write_text("method: simpo\n" + base + "beta: 2.0\nsimpo_gamma: 1.4\ngamma_beta_ratio: 0.5\n")
    warned = {w["path"]: w for w in validate(yaml.safe_load(g.read_text()), complete=False)["warnings"]}
    assert warned["/simpo_gamma"]["code"] == "conflict" and "1.4" in warned["/simpo_gamma"]["message"]
    agree = yaml.safe_load(g.read_text()) | {"simpo_gamma": 1.0}
    assert "/simpo_gamma" not in {w["path"] for w in validate(agree, complete=False)["warnings"]}


def test_one_learning_rate_range_for_validate_diagnose_and_explain(capsys):
    """SimPO's learning-rate range comes from one table: the validator's warning, the diagnosis finding and
    `explain` quote the same numbers, and the diagnosis suggests the top of the typical range, not the edge."""
    from prefpilot import skills
    from prefpilot.cli import main as cli
    from prefpilot.diagnosis import diagnose
    r = skills.load_table("simpo")["ranges"]["learning_rate"]
    typical, accepted = f"{r['typical'][0]:g}–{r['typical'][1]:g}", f"{r['sane'][0]:g}–{r['sane'][1]:g}"
    cfg = {**BASE, "method": "simpo", "beta": 2.0, "learning_rate": 1e-5}
    warned = {w["path"]: w["message"] for w in validate(cfg, complete=False)["warnings"]}
    assert typical in warned["/learning_rate"] and accepted in warned["/learning_rate"]
    rows = [{"step": s, "loss": 1.0 - 0.01 * s, "nll_loss": 1.0, "rewards/margins": 0.1 * s,
             "logps/chosen": -1.0 - 0.01 * s, "learning_rate": 1e-5} for s in range(1, 8)]
    f = {x["id"]: x for x in diagnose(rows, method="simpo", config=cfg)["findings"]}["lr_out_of_range"]
    assert typical in f["explanation"] and accepted in f["explanation"]
    assert f["remedies"][0]["change"] == {"learning_rate": r["typical"][1]}
    assert cli(["explain", "sigmoid", "--method", "simpo"]) == 0
    out = capsys.readouterr().out
    assert f"typical {typical}, accepted {accepted}" in out and "{'" not in out and "\n###" not in out
