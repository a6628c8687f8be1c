"""The skills' and the validator's claims about TRL 1.16 / transformers 5, checked by TRL's own code: its config
parser, its dataclass defaults, its loss code and its trainer's refusals. Each of these claims was wrong before."""
import tempfile
import warnings

import pytest
import yaml

from prefpilot.cli import main as cli
from prefpilot.config.export import export_trl
from prefpilot.config.validate import LABEL_SMOOTHING_LOSSES, validate
from skill_docs import ROOT, blocks
from trl_losses import make_batch, trl_dpo_loss

BASE = {"method": "dpo", "model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "dataset_path": "builtin:arith-prefs"}


def trl_parse(cfg: dict, method: str):
    """Parse a config file with TRL's own TrlParser and the dataclasses its CLI (or a CPO script) uses."""
    from trl import DatasetMixtureConfig, DPOConfig, ModelConfig, ScriptArguments, TrlParser
    from trl.experimental.cpo import CPOConfig
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        yaml.safe_dump({**cfg, "use_cpu": True, "bf16": False}, fh)
    types = (ScriptArguments, DPOConfig if method == "dpo" else CPOConfig, ModelConfig, DatasetMixtureConfig)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TrlParser(types).parse_args_and_config(args=["--config", fh.name])


def test_defaults_block_is_dpoconfigs_own():
    from trl import DPOConfig
    table = yaml.safe_load((ROOT / "skills/mlops/trl-fine-tuning/references/hyperparameters.yaml").read_text())
    d = DPOConfig(output_dir=tempfile.mkdtemp(), use_cpu=True, bf16=False)
    for key, value in table["defaults"].items():
        if key == "source":
            continue
        got = getattr(d, key)
        got = got.value if hasattr(got, "value") else got
        got = got[0] if isinstance(got, list) and len(got) == 1 else got
        assert got == value, f"defaults.{key}: the table says {value!r}, DPOConfig() has {got!r}"


@pytest.mark.parametrize("file,tag,body,expect", [b for b in blocks("yaml") if not b[3]],
                         ids=lambda v: v if isinstance(v, str) and v.endswith(".md") else None)
def test_every_config_snippet_parses_with_trls_own_parser(file, tag, body, expect):
    snippet = yaml.safe_load(body)
    method = snippet.get("method", "simpo" if "/simpo/" in file else "dpo")
    cfg, _ = export_trl({**BASE, "method": method, **snippet})
    trl_parse(cfg, method)  # TRL refuses unknown keys: every key in the skills is one TRL knows


def test_export_is_accepted_by_trls_dpo_cli_parser(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({**BASE, "hardware": {"num_gpus": 1}, "diagnose": {"stop_on": "error"},
                                        "beta": 0.1, "learning_rate": 5e-7}))
    out = tmp_path / "trl.yaml"
    assert cli(["export", "--trl", str(cfg_file), "-o", str(out)]) == 0
    exported = yaml.safe_load(out.read_text())
    assert not {"method", "hardware", "diagnose", "dataset_path"} & set(exported)
    script, dpo, model, mixture = trl_parse(exported, "dpo")
    assert dpo.beta == 0.1 and mixture.datasets[0].data_files.endswith("arith-prefs.train.jsonl")
    with pytest.raises(ValueError, match="Unknown arguments"):  # the unexported config is refused by TRL
        trl_parse({**BASE, "beta": 0.1}, "dpo")


def test_label_smoothing_is_ignored_by_sigmoid_and_read_by_the_others():
    batch = make_batch(3)
    for lt in ("sigmoid", "hinge", "ipo"):
        assert trl_dpo_loss(batch, lt, label_smoothing=0.0)[0] == trl_dpo_loss(batch, lt, label_smoothing=0.3)[0]
    for lt in sorted(LABEL_SMOOTHING_LOSSES - {"exo_pair"}):
        assert trl_dpo_loss(batch, lt, label_smoothing=0.0)[0] != trl_dpo_loss(batch, lt, label_smoothing=0.3)[0]
    assert trl_dpo_loss(batch, "exo_pair", label_smoothing=1e-3)[0] != trl_dpo_loss(batch, "exo_pair",
                                                                                   label_smoothing=0.3)[0]
    warned = validate({**BASE, "label_smoothing": 0.1}, complete=False)["warnings"]
    assert "ignored" in {w["code"] for w in warned}
    assert "ignored" not in {w["code"] for w in validate({**BASE, "loss_type": "robust", "label_smoothing": 0.1},
                                                          complete=False)["warnings"]}


def test_aot_pair_is_todays_aot_unpaired_and_fails_only_at_the_first_step():
    from trl import DPOConfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        DPOConfig(output_dir=tempfile.mkdtemp(), loss_type=["aot_pair"], use_cpu=True, bf16=False)  # parses
    with pytest.raises(ValueError):
        trl_dpo_loss(make_batch(1), "aot_pair")  # refused where the loss is computed
    (err,) = validate({**BASE, "loss_type": "aot_pair"}, complete=False)["errors"]
    assert err["suggestion"] == "use `aot_unpaired`"


def test_exo_pair_without_label_smoothing_is_refused_by_the_trainer(tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from tiny_model import build_tiny_model
    path = build_tiny_model(tmp_path / "tiny")
    ds = Dataset.from_list([{"prompt": "1+1=", "chosen": "2", "rejected": "3"}] * 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = DPOConfig(output_dir=str(tmp_path / "o"), loss_type=["exo_pair"], label_smoothing=0.0, use_cpu=True,
                         bf16=False, report_to="none")
        with pytest.raises(ValueError, match="[Ll]abel.smoothing"):
            DPOTrainer(model=AutoModelForCausalLM.from_pretrained(path), args=args, train_dataset=ds,
                       processing_class=AutoTokenizer.from_pretrained(path))


def test_numbers_as_trls_parser_reads_them_and_non_finite_numbers():
    r = validate({**BASE, "learning_rate": "1e-4", "beta": "0.1"}, complete=False)
    assert r["valid"] and r["normalized"]["learning_rate"] == 1e-4 and any("1e-4" in n for n in r["notes"])
    assert trl_parse({"learning_rate": "1e-4"}, "dpo")[1].learning_rate == 1e-4  # what TRL itself makes of it
    bad = validate({**BASE, "beta": float("nan")}, complete=False)
    assert not bad["valid"] and bad["errors"][0]["code"] == "not_finite"


def test_deprecated_and_renamed_options_warn():
    codes = {w["code"] for w in validate({**BASE, "use_liger_kernel": True, "gradient_checkpointing": True},
                                         complete=False)["warnings"]}
    assert {"deprecated", "renamed"} <= codes


def test_memory_is_an_error_only_for_a_stated_or_local_machine():
    big = {**BASE, "model_name_or_path": "meta-llama/Llama-3.1-8B", "model_params": 8.0e9}
    laptop = validate(big, complete=False)
    assert laptop["valid"] and "out_of_memory" in {w["code"] for w in laptop["warnings"]}
    assert "assumed" in next(w for w in laptop["warnings"] if w["code"] == "out_of_memory")["message"]
    assert not validate(big, complete=False, local=True)["valid"]
    small_gpu = {**big, "hardware": {"gpu_memory_gb": 16, "num_gpus": 1, "bf16_supported": True}}
    assert "out_of_memory" in {e["code"] for e in validate(small_gpu, complete=False)["errors"]}


def test_models_not_on_disk_are_a_download_warning_and_missing_folders_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    r = validate({**BASE, "model_name_or_path": "someone/not-cached-model"})
    assert r["valid"] and "model_download" in {w["code"] for w in r["warnings"]}
    (tmp_path / "empty-cache" / "models--someone--cached").mkdir(parents=True)
    assert "model_download" not in {w["code"] for w in validate({**BASE, "model_name_or_path": "someone/cached"})[
        "warnings"]}
    r = validate({**BASE, "model_name_or_path": str(tmp_path / "no-such-model")})
    assert not r["valid"] and r["errors"][0]["code"] == "model_not_found"


def test_unknown_method_names_the_supported_ones(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("method: ppo\nmodel_name_or_path: m\n")
    assert cli(["validate", str(f)]) == 1
    out = capsys.readouterr().out
    assert "None" not in out and "dpo" in out and "simpo" in out
