"""The skills' and the validator's claims about TRL 1.16 / transformers 5, checked by TRL's own code: its config
parser, its dataclass defaults, its loss code and its trainer's refusals. Each of these claims was wrong before."""
import os
import tempfile
import warnings

import pytest
import yaml

from prefpilot.cli import main as cli
from prefpilot.config.export import export_trl
from prefpilot.config.validate import LABEL_SMOOTHING_LOSSES, validate
from skill_docs import ROOT, blocks
from trl_losses import make_batch, trl_cpo_losses, trl_dpo_loss

BASE = {"method": "dpo", "model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "dataset_path": "builtin:arith-prefs"}


def trl_parse(cfg: dict, method: str):
    """Parse a config file with TRL's own TrlParser and the dataclasses its CLI (or a CPO script) uses."""
    from trl import DatasetMixtureConfig, DPOConfig, KTOConfig, ModelConfig, ScriptArguments, TrlParser
    from trl.experimental.cpo import CPOConfig
    from trl.experimental.orpo import ORPOConfig
    trainer_config = {"dpo": DPOConfig, "orpo": ORPOConfig, "kto": KTOConfig}.get(method, CPOConfig)
    types = (ScriptArguments, trainer_config, ModelConfig, DatasetMixtureConfig)
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():  # nothing left in the temp folder
        path = os.path.join(d, "trl.yaml")
        with open(path, "w", encoding="utf-8") as fh:
            yaml.safe_dump({**cfg, "use_cpu": True, "bf16": False}, fh)
        warnings.simplefilter("ignore")
        return TrlParser(types).parse_args_and_config(args=["--config", path])


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


def test_export_refuses_a_config_that_does_not_validate(tmp_path, capsys):
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text(yaml.safe_dump({**BASE, "bta": 0.1, "max_prompt_length": 128,
                                        "loss_type": ["sigmoid", "ipo"], "loss_weights": [1.0]}))
    out = tmp_path / "trl.yaml"
    assert cli(["export", "--trl", str(cfg_file), "-o", str(out)]) == 1 and not out.exists()
    err = capsys.readouterr().err
    assert "nothing was exported" in err and all(k in err for k in ("/bta", "/max_prompt_length", "/loss_weights"))


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


# --- dpo-training.md's WPO, LD-DPO and f-divergence formulas, run through DPOTrainer._compute_loss ---------------

def _per_pair_sigmoid(c, r, beta):
    """DPO's sigmoid loss per pair on chosen/rejected scores (log-ratios, or what replaces them)."""
    import torch.nn.functional as F
    return -F.logsigmoid(beta * (c - r))


def _wpo_weights(per_token, log_sum_sq, completion_mask):
    """dpo-training.md: exp(mean over the completion's tokens of (log p(y_t) − log Σ_v p(v)²)), per completion."""
    mask = completion_mask[:, 1:].to(per_token.dtype)
    w = ((per_token - log_sum_sq) * mask).sum(1) / mask.sum(1)
    return w.exp().chunk(2)


def test_wpo_weight_is_unclamped_has_no_gradient_and_multiplies_every_loss_term():
    import torch
    b, beta = make_batch(5), 0.1
    u = torch.rand(b["per_token"].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lss = 2 * b["per_token"] * (1 - u)  # a valid log Σp² lies in [2·log p, 0]
    wc, wr = _wpo_weights(b["per_token"], lss, b["completion_mask"])
    assert (torch.cat([wc, wr]) > 1).any()  # the weight is not clamped to 1
    lc, lr = b["pi_c"] - b["ref_c"], b["pi_r"] - b["ref_r"]
    hinge = torch.relu(1 - beta * (lc - lr))
    expected = ((_per_pair_sigmoid(lc, lr, beta) * wc * wr).mean() + 0.5 * (hinge * wc * wr).mean()).item()
    got = trl_dpo_loss(b, ["sigmoid", "hinge"], beta=beta, loss_weights=[1.0, 0.5], use_weighting=True,
                       log_sum_sq_probs=lss)[0]
    assert got == pytest.approx(expected, rel=1e-9)

    # no gradient flows through the weight: TRL's gradient is the one with the weight held constant
    leaf = b["per_token"].clone().requires_grad_(True)
    trl_dpo_loss(b, "sigmoid", beta=beta, use_weighting=True, log_sum_sq_probs=lss, per_token=leaf)[0].backward()
    mask = b["completion_mask"][:, 1:].double()

    def manual(pt, weights_from):
        c, r = ((pt * mask).sum(1)).chunk(2)
        wc, wr = _wpo_weights(weights_from, lss, b["completion_mask"])
        return (_per_pair_sigmoid(c - b["ref_c"], r - b["ref_r"], beta) * wc * wr).mean()

    held = b["per_token"].clone().requires_grad_(True)
    manual(held, held.detach()).backward()
    # compared on completion tokens (the fake model's log-probs outside them are zeros TRL sums as they are)
    assert torch.allclose(leaf.grad * mask, held.grad)
    through = b["per_token"].clone().requires_grad_(True)
    manual(through, through).backward()
    assert not torch.allclose(leaf.grad * mask, through.grad)  # the check can tell the two apart


def test_ld_dpo_counts_the_shared_length_fully_and_the_excess_by_alpha():
    import torch
    b, beta, alpha = make_batch(7), 0.1, 0.3
    mask = b["completion_mask"][:, 1:].bool()
    tokens = [b["per_token"][i][mask[i]] for i in range(mask.shape[0])]  # each completion's log-probs, in order
    half = len(tokens) // 2
    scores = []
    for i, t in enumerate(tokens):
        shared = min(len(tokens[i % half]), len(tokens[i % half + half]))
        scores.append(t[:shared].sum() + alpha * t[shared:].sum())
    c, r = torch.stack(scores).chunk(2)
    assert (torch.tensor([len(t) for t in tokens[:half]]) != torch.tensor([len(t) for t in tokens[half:]])).any()
    expected = _per_pair_sigmoid(c - b["ref_c"], r - b["ref_r"], beta).mean().item()
    assert trl_dpo_loss(b, "sigmoid", beta=beta, ld_alpha=alpha)[0] == pytest.approx(expected, rel=1e-9)
    assert trl_dpo_loss(b, "sigmoid", beta=beta, ld_alpha=1.0)[0] == pytest.approx(trl_dpo_loss(b, "sigmoid")[0])


@pytest.mark.parametrize("kind,coef", [("forward_kl", 0.5), ("js_divergence", 0.5), ("alpha_divergence", 0.5),
                                       ("alpha_divergence", 0.2), ("alpha_divergence", 1.0)])
def test_f_divergence_scores_are_the_ones_the_skill_states(kind, coef):
    import math

    import torch
    import torch.nn.functional as F
    b, beta = {k: v.float() if v.is_floating_point() else v for k, v in make_batch(11).items()}, 0.1  # as trained
    score = {"forward_kl": lambda r: 1 - torch.exp(-r),
             "js_divergence": lambda r: math.log(2) + F.logsigmoid(r),
             "alpha_divergence": (lambda r: r) if coef == 1.0 else
             (lambda r: (torch.exp((coef - 1) * r) - 1) / (coef - 1))}[kind]
    expected = _per_pair_sigmoid(score(b["pi_c"] - b["ref_c"]), score(b["pi_r"] - b["ref_r"]), beta).mean().item()
    got = trl_dpo_loss(b, "sigmoid", beta=beta, f_divergence_type=kind, f_alpha_divergence_coef=coef)[0]
    assert got == pytest.approx(expected, rel=1e-6)
    assert kind == "alpha_divergence" and coef == 1.0 or got != pytest.approx(trl_dpo_loss(b, "sigmoid")[0])


def test_old_reference_free_is_cpo_sigmoid_without_the_sft_term():
    """dpo-training.md: old `reference_free: true` (reference log-probs taken as 0) = CPO, loss_type sigmoid."""
    import torch
    b, beta = make_batch(3), 0.1
    zero = {**b, "ref_c": torch.zeros_like(b["ref_c"]), "ref_r": torch.zeros_like(b["ref_r"])}
    old = trl_dpo_loss(zero, "sigmoid", beta=beta)[0]
    cpo = trl_cpo_losses(b["pi_c"], b["pi_r"], loss_type="sigmoid", beta=beta, simpo_gamma=0.0)[0].mean().item()
    assert cpo == pytest.approx(old, rel=1e-9)
    assert "cpo_alpha 0" in validate({**BASE, "reference_free": True}, complete=False)["errors"][0]["message"]


def _tiny_trainer_parts(tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tiny_model import build_tiny_model
    path = build_tiny_model(tmp_path / "tiny")
    ds = Dataset.from_list([{"prompt": "1+1=", "chosen": "2", "rejected": "3 or maybe 4"},
                            {"prompt": "2+3=", "chosen": "the answer is 5", "rejected": "6"}] * 2)
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path), ds


def test_cpo_averages_for_simpo_and_its_sft_term_is_one_token_mean(tmp_path):
    """simpo/loss-functions.md: SimPO scores average log-probs; L = mean(L_pair) + cpo_alpha · token-mean NLL."""
    import torch
    import torch.nn.functional as F
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    model, tok, ds = _tiny_trainer_parts(tmp_path)
    beta, gamma, cpo_alpha = 2.0, 1.0, 0.7
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = CPOConfig(output_dir=str(tmp_path / "o"), loss_type="simpo", beta=beta, simpo_gamma=gamma,
                         cpo_alpha=cpo_alpha, use_cpu=True, bf16=False, report_to="none",
                         per_device_train_batch_size=4, max_length=64)
        trainer = CPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        loss, metrics = trainer.get_batch_loss_metrics(trainer.model, batch)
        side = {}
        for name in ("chosen", "rejected"):
            logits = trainer.model(batch[f"{name}_input_ids"], attention_mask=batch[f"{name}_attention_mask"]).logits
            labels = batch[f"{name}_labels"][:, 1:]
            mask = labels != -100
            lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, labels.clamp_min(0)[..., None])[..., 0]
            side[name] = ((lp * mask).sum(1), mask.sum(1), (lp * mask).sum(1) / mask.sum(1))
    (sum_c, n_c, avg_c), (_, _, avg_r) = side["chosen"], side["rejected"]
    assert len(set(n_c.tolist())) > 1  # completions of different lengths, so token-mean ≠ mean of averages
    nll = -sum_c.sum() / n_c.sum()
    expected = (-F.logsigmoid(beta * (avg_c - avg_r) - gamma)).mean() + cpo_alpha * nll
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["logps/chosen"] == pytest.approx(avg_c.mean().item(), rel=1e-5)
    assert metrics["nll_loss"] == pytest.approx(nll.item(), rel=1e-5)
    # issue 26: the untrained model's first margin is β × its own per-token gap, not 0 (no reference to subtract)
    m0 = (beta * (avg_c - avg_r)).mean().item()
    assert metrics["rewards/margins"] == pytest.approx(m0, rel=1e-4) and abs(m0) > 1e-3
    assert nll.item() != pytest.approx((-avg_c).mean().item(), rel=1e-3)
    trainer.loss_type = "sigmoid"  # any other loss type sums
    with torch.no_grad():
        assert trainer.get_batch_loss_metrics(trainer.model, batch)[1]["logps/chosen"] == pytest.approx(
            sum_c.mean().item(), rel=1e-5)


def test_trainer_refuses_a_lora_adapter_on_lm_head_and_precompute_on_a_stream(tmp_path):
    from peft import LoraConfig, get_peft_model
    from trl import DPOConfig, DPOTrainer
    model, tok, ds = _tiny_trainer_parts(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = DPOConfig(output_dir=str(tmp_path / "o"), use_cpu=True, bf16=False, report_to="none", max_steps=1)
        peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
        with pytest.raises(ValueError, match="lm_head"):
            DPOTrainer(model=peft_model, args=args, train_dataset=ds, processing_class=tok)
        # the alternative dpo-training.md gives: a full trainable copy of lm_head, which does train
        saved = get_peft_model(_tiny_trainer_parts(tmp_path)[0],
                               LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]))
        before = saved.get_output_embeddings().weight.detach().clone()
        args.learning_rate, args.per_device_train_batch_size = 1e-2, 4
        DPOTrainer(model=saved, args=args, train_dataset=ds, processing_class=tok).train()
        assert not saved.get_output_embeddings().weight.detach().equal(before)
        model = _tiny_trainer_parts(tmp_path)[0]
        args.precompute_ref_log_probs = True
        with pytest.raises(ValueError, match="IterableDataset"):
            DPOTrainer(model=model, args=args, train_dataset=ds.to_iterable_dataset(), processing_class=tok)
    assert validate({**BASE, "use_peft": True, "lora_target_modules": ["q_proj", "lm_head"]},
                    complete=False)["errors"][0]["path"] == "/lora_target_modules"
    assert validate({**BASE, "precompute_ref_log_probs": True, "streaming": True},
                    complete=False)["errors"][0]["path"] == "/precompute_ref_log_probs"


def test_cpoconfig_defaults_are_the_ones_the_simpo_skill_states():
    import re

    from trl.experimental.cpo import CPOConfig
    text = (ROOT / "skills/mlops/simpo/references/loss-functions.md").read_text()
    m = re.search(r"β ([\d.]+), `simpo_gamma` ([\d.]+) \(γ/β = ([\d.]+)\) and\s+`cpo_alpha` ([\d.]+)", text)
    assert m, "loss-functions.md no longer states CPOConfig's defaults in the form this test reads"
    beta, gamma, ratio, alpha = map(float, m.groups())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = CPOConfig(output_dir=tempfile.mkdtemp(), use_cpu=True, bf16=False)
    assert (c.beta, c.simpo_gamma, c.cpo_alpha) == (beta, gamma, alpha) and gamma / beta == ratio


# --- issue 26: the skills' "run it with TRL alone" advice is `prefpilot export --trl`, checked on every example ---

def _skill_example_configs():
    """Every full run config (a yaml block with `method:`) in the skills, with its file."""
    out = []
    for file, tag, body, expect in blocks("yaml"):
        snippet = yaml.safe_load(body)
        if not expect and isinstance(snippet, dict) and "method" in snippet:
            out.append((file, snippet))
    return out


@pytest.mark.parametrize("file,snippet", _skill_example_configs(), ids=lambda v: v if isinstance(v, str) else None)
def test_every_skill_example_exports_through_the_cli_to_a_config_trls_parser_takes(file, snippet, tmp_path):
    from prefpilot.config.normalize import PREFPILOT_KEYS
    cfg_file, out = tmp_path / "run.yaml", tmp_path / "trl.yaml"
    cfg_file.write_text(yaml.safe_dump({**BASE, **snippet}))
    assert cli(["export", "--trl", str(cfg_file), "-o", str(out)]) == 0
    exported = yaml.safe_load(out.read_text())
    assert not PREFPILOT_KEYS & set(exported) and exported["datasets"]  # `trl dpo` stops without a dataset
    parsed = trl_parse(exported, snippet["method"])
    if snippet["method"] == "simpo":
        want = snippet.get("sft_weight", 0.0)  # 0 (pure SimPO) unless the example asks for an SFT term
        assert exported["cpo_alpha"] == want and parsed[1].cpo_alpha == want and parsed[1].loss_type == "simpo"
        if file == "skills/mlops/simpo/SKILL.md":
            assert want == 0 and exported["cpo_alpha"] == 0
        ratio = snippet.get("gamma_beta_ratio", 0.5)
        assert parsed[1].simpo_gamma == pytest.approx(ratio * parsed[1].beta)


def test_simpo_skill_example_left_unexported_is_refused_or_becomes_cpo_simpo():
    """What the old advice (drop method/hardware/dataset_path/diagnose) produced from the SimPO skill's example."""
    (snippet,) = [s for f, s in _skill_example_configs() if f == "skills/mlops/simpo/SKILL.md"]
    by_hand = {k: v for k, v in snippet.items() if k not in ("method", "hardware", "dataset_path", "diagnose")}
    with pytest.raises(ValueError, match="gamma_beta_ratio"):
        trl_parse(by_hand, "simpo")
    without_ratio = {k: v for k, v in by_hand.items() if k != "gamma_beta_ratio"}
    assert trl_parse(without_ratio, "simpo")[1].cpo_alpha == 1.0  # CPOConfig's default: an SFT term, CPO-SimPO


def test_the_skills_list_exactly_the_keys_export_drops():
    import re

    from prefpilot.config.normalize import PREFPILOT_KEYS
    for skill in ("trl-fine-tuning", "simpo", "preference-diagnostics"):
        text = (ROOT / f"skills/mlops/{skill}/SKILL.md").read_text(encoding="utf-8")
        m = re.search(r"drops every prefpilot-only key\s*\(([^)]*)\)", text)
        assert m, f"{skill}/SKILL.md no longer says which keys `prefpilot export --trl` drops"
        assert set(re.findall(r"`(\w+)`", m.group(1))) == PREFPILOT_KEYS, skill


def test_export_says_a_cpu_machine_needs_use_cpu(tmp_path):
    import torch
    from transformers import TrainingArguments
    cfg, notes = export_trl({**BASE, "beta": 0.1})
    assert "use_cpu" not in cfg and any("use_cpu: true" in n for n in notes)
    assert not any("use_cpu" in n for n in export_trl({**BASE, "bf16": False})[1])
    if not torch.cuda.is_available():  # what the note is about: transformers refuses bf16 here without use_cpu
        with pytest.raises(ValueError, match="use_cpu"):
            TrainingArguments(output_dir=str(tmp_path), bf16=True)
        TrainingArguments(output_dir=str(tmp_path), bf16=True, use_cpu=True)


def test_padding_free_is_ignored_by_dpotrainer_whatever_the_attention(tmp_path):
    from trl import DPOConfig, DPOTrainer
    model, tok, ds = _tiny_trainer_parts(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = DPOConfig(output_dir=str(tmp_path / "o"), use_cpu=True, bf16=False, report_to="none",
                         padding_free=True)
        trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    assert trainer.padding_free is False  # no FlashAttention check before it: the flag is dropped outright
    for attn in (None, "sdpa", "flash_attention_2"):
        r = validate({**BASE, "padding_free": True, "attn_implementation": attn}, complete=False)
        assert r["valid"] and "/padding_free" in {w["path"] for w in r["warnings"]}


def test_an_explicit_ref_model_is_used_with_peft_and_the_messages_say_so(tmp_path):
    from peft import LoraConfig, get_peft_model
    from trl import DPOConfig, DPOTrainer
    model, tok, ds = _tiny_trainer_parts(tmp_path)
    ref = _tiny_trainer_parts(tmp_path)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = DPOConfig(output_dir=str(tmp_path / "o"), use_cpu=True, bf16=False, report_to="none")
        peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"]))
        assert DPOTrainer(model=peft_model, ref_model=ref, args=args, train_dataset=ds,
                          processing_class=tok).ref_model is ref
        assert DPOTrainer(model=get_peft_model(_tiny_trainer_parts(tmp_path)[0],
                                               LoraConfig(r=4, target_modules=["q_proj"])),
                          args=args, train_dataset=ds, processing_class=tok).ref_model is None  # adapter off
    (err,) = validate({**BASE, "force_use_ref_model": True}, complete=False)["errors"]
    assert "ref_model" in err["message"] and "PEFT or not" in err["message"]


def test_bf16_on_a_cpu_only_machine_names_use_cpu():
    cpu = {"hardware": {"gpu_memory_gb": 0, "num_gpus": 0}}
    (w,) = [w for w in validate({**BASE, **cpu, "bf16": True}, complete=False)["warnings"] if w["path"] == "/bf16"]
    assert "use_cpu" in w["message"] and "refuses" in w["message"]


def test_weights_load_in_float32_unless_dtype_is_set_and_the_estimate_assumes_the_same():
    from trl import ModelConfig

    from prefpilot.config.estimate import estimate_memory
    assert ModelConfig().dtype == "float32"  # what `trl dpo` loads with when the config has no dtype
    gpu = {"gpu_memory_gb": 80, "num_gpus": 1, "bf16_supported": True}
    cfg = {**BASE, "model_params": 1.0e9, "bf16": True}
    fp32, bf16 = estimate_memory(cfg, gpu), estimate_memory({**cfg, "dtype": "bfloat16"}, gpu)
    assert fp32["assumptions"]["load_dtype"] == "float32" and bf16["assumptions"]["load_dtype"] == "bfloat16"
    assert fp32["parts_gb"]["weights"] == fp32["parts_gb"]["reference_model"] == 4.0  # 4 bytes/param each
    assert bf16["parts_gb"]["weights"] == bf16["parts_gb"]["reference_model"] == 2.0


@pytest.mark.parametrize("old_alpha", [0.2, 0.5, 0.7])
def test_an_old_alpha_divergence_coef_is_todays_one_minus_it(old_alpha):
    """dpo-variants.md: TRL ≤ 0.2x scored (1 − e^(−α·r))/α; TRL 1.16 at coef 1 − α is the same loss."""
    import torch
    b, beta = {k: v.float() if v.is_floating_point() else v for k, v in make_batch(13).items()}, 0.1

    def old(r):
        return (1 - torch.exp(-old_alpha * r)) / old_alpha

    expected = _per_pair_sigmoid(old(b["pi_c"] - b["ref_c"]), old(b["pi_r"] - b["ref_r"]), beta).mean().item()
    ported = trl_dpo_loss(b, "sigmoid", beta=beta, f_divergence_type="alpha_divergence",
                          f_alpha_divergence_coef=1 - old_alpha)[0]
    assert ported == pytest.approx(expected, rel=1e-5)
    if old_alpha != 0.5:  # the same number copied across is another divergence
        same = trl_dpo_loss(b, "sigmoid", beta=beta, f_divergence_type="alpha_divergence",
                            f_alpha_divergence_coef=old_alpha)[0]
        assert same != pytest.approx(expected, rel=1e-3)


def test_grad_norm_and_learning_rate_are_the_logging_steps_own_values_and_the_policy_cannot_be_its_reference(
        tmp_path):
    """dpo-training.md / findings.yaml grad_spike: with logging_steps N, grad_norm and learning_rate are the Nth step's
    values (a spike on another step is not in the log), while loss and TRL's rewards/* are window means."""
    from trl import DPOConfig, DPOTrainer
    model, tok, ds = _tiny_trainer_parts(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="same object"):  # findings.yaml: refused at init by TRL 1.16
            DPOTrainer(model=model, ref_model=model, args=DPOConfig(output_dir=str(tmp_path / "r"), use_cpu=True,
                                                                    bf16=False, report_to="none"),
                       train_dataset=ds, processing_class=tok)
        args = DPOConfig(output_dir=str(tmp_path / "o"), use_cpu=True, bf16=False, report_to="none", max_steps=4,
                         logging_steps=2, per_device_train_batch_size=1, learning_rate=1e-3, save_strategy="no",
                         lr_scheduler_type="linear", warmup_steps=0)
        trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
        per_step, logged = [], []
        original = trainer._maybe_log_save_evaluate

        def spy(tr_loss, grad_norm, *a, learning_rate=None, **kw):
            per_step.append((float(grad_norm), learning_rate))
            return original(tr_loss, grad_norm, *a, learning_rate=learning_rate, **kw)

        trainer._maybe_log_save_evaluate = spy
        trainer.log = (lambda log: (lambda logs, *a, **k: (logged.append(dict(logs)), log(logs, *a, **k))[1]))(
            trainer.log)
        trainer.train()
    rows = [r for r in logged if "grad_norm" in r]
    assert len(rows) == 2 and len(per_step) >= 4  # one call per step (and one more after the loop)
    for row, (gn, lr) in zip(rows, (per_step[1], per_step[3])):
        assert row["grad_norm"] == pytest.approx(gn) and row["learning_rate"] == pytest.approx(lr)
    assert per_step[0][1] != per_step[1][1]  # the window's other step had another learning rate, not in the log


# --- issue 26: practice.md (several GPUs, dtype, data, evaluation, streaming) ------------------------------------

def test_the_accelerate_configs_practice_md_names_ship_with_trl():
    import importlib.resources
    import re
    text = (ROOT / "skills/mlops/trl-fine-tuning/references/practice.md").read_text(encoding="utf-8")
    names = re.search(r"takes a file or the name of one TRL ships \(([^)]*)\)", text).group(1)
    shipped = {p.name[:-5] for p in importlib.resources.files("trl.accelerate_configs").iterdir()
               if p.name.endswith(".yaml")}
    assert set(re.findall(r"`(\w+)`", names)) == shipped


def test_an_exported_mixture_has_no_test_split_unless_test_split_size_is_set():
    from trl import get_dataset
    cfg, _ = export_trl(BASE)
    mixture = trl_parse(cfg, "dpo")[3]
    assert set(get_dataset(mixture)) == {"train"}  # `trl dpo` with eval_strategy would look up "test" and fail
    split = trl_parse({**cfg, "test_split_size": 0.25}, "dpo")[3]
    assert set(get_dataset(split)) == {"train", "test"}


def test_a_streamed_dataset_needs_max_steps(tmp_path):
    from trl import DPOConfig, DPOTrainer
    model, tok, ds = _tiny_trainer_parts(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = DPOConfig(output_dir=str(tmp_path / "o"), use_cpu=True, bf16=False, report_to="none")
        with pytest.raises(ValueError, match="max_steps"):  # refused when the trainer is built
            DPOTrainer(model=model, args=args, train_dataset=ds.to_iterable_dataset(), processing_class=tok)
    assert "/max_steps" in {w["path"] for w in validate({**BASE, "streaming": True}, complete=False)["warnings"]}
    assert "/max_steps" not in {w["path"] for w in validate({**BASE, "streaming": True, "max_steps": 100},
                                                            complete=False)["warnings"]}
