"""Generate the JSON Schemas of prefpilot run configs from the installed TRL dataclasses.

    prefpilot schemas generate [--check]

Field lists, types, defaults and help strings come from TRL's config classes (the
same ones `trl dpo --config` parses: ScriptArguments, DPOConfig/CPOConfig,
ModelConfig, DatasetMixtureConfig); prefpilot's own keys and the constraints that
TRL does not declare are added from the tables below. This module imports TRL and
is run by a command or a test only, never on a light path.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import re
import types
import typing
from pathlib import Path

from .limits import (MAX_ACCUMULATION, MAX_BATCH, MAX_EPOCHS, MAX_GPU_MEMORY_GB, MAX_GPUS, MAX_MODEL_PARAMS, MAX_RANK,
                     MAX_SECONDS, MAX_SEED, MAX_STEPS, MAX_TOKENS, MAX_WORKERS)

SCHEMA_DIR = Path(__file__).parent / "schemas"
DRAFT = "https://json-schema.org/draft/2020-12/schema"

# prefpilot's additions, common to both methods.
PREFPILOT_FIELDS = {
    "method": {"enum": ["dpo", "simpo", "orpo", "kto", "cpo"], "default": "dpo",
               "description": "prefpilot: which trainer runs this config (DPOTrainer, TRL's CPO trainer in SimPO mode, "
                              "TRL's experimental ORPOTrainer, KTOTrainer, or TRL's CPO trainer as it is)."},
    "dataset_path": {"type": "string", "minLength": 1,
                     "description": "prefpilot: a local .jsonl/.json/.parquet/.csv file, or builtin:<name> for a dataset shipped with prefpilot."},
    "model_params": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_MODEL_PARAMS, "x-code": "range",
                     "x-message": f"model_params must be a parameter count > 0 and at most {MAX_MODEL_PARAMS:g}",
                     "description": "prefpilot: parameter count of the model (e.g. 7.2e9), for the memory estimate when it cannot be read from disk."},
    "hardware": {
        "type": "object", "additionalProperties": False,
        "description": "prefpilot: the machine the run is meant for; absent, the local machine.",
        "properties": {
            "gpu_memory_gb": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": MAX_GPU_MEMORY_GB,
                              "x-code": "range",
                              "x-message": f"hardware.gpu_memory_gb must be a number of GB > 0 and at most "
                                           f"{MAX_GPU_MEMORY_GB}, or null for CPU",
                              "description": "memory of one GPU in GB; null for CPU"},
            "num_gpus": {"type": "integer", "minimum": 0, "maximum": MAX_GPUS, "x-code": "range",
                         "x-message": f"hardware.num_gpus must be an integer from 0 to {MAX_GPUS}"},
            "bf16_supported": {"type": "boolean"},
        },
    },
    "eval_holdout": {"anyOf": [{"enum": ["auto", False]}, {"type": "number", "minimum": 0, "maximum": 1_000_000}],
                     "default": "auto", "x-code": "range",
                     "x-message": "eval_holdout is auto, false, a share of the pairs below 1 (0.05) or a count (64)",
                     "description": "prefpilot: held-out pairs set aside at launch when the data has no test split, "
                                    "for `prefpilot eval` (never trained on; kept in eval/holdout.jsonl): a share "
                                    "below 1, a count, false for none, or auto (5%, at most 64, for 200 pairs or "
                                    "more)"},
    "eval": {
        "type": "object", "additionalProperties": False, "required": ["every_steps"],
        "description": "prefpilot: evaluation during training: every `every_steps` optimizer steps, the model's "
                       "held-out preference accuracy and generation checks (as `prefpilot eval` computes them) are "
                       "logged to metrics.jsonl as heldout/* metrics, judged by the live diagnosis and its stop_on; "
                       "one process only (skipped, with a note, under multi-process training)",
        "properties": {
            "every_steps": {"type": "integer", "minimum": 1, "maximum": MAX_STEPS,
                            "description": "optimizer steps between evaluations"},
            "pairs": {"type": "integer", "minimum": 1, "maximum": 4096, "default": 32,
                      "description": "held-out pairs scored each time (from the test split, or the eval_holdout slice)"},
            "prompts": {"type": "integer", "minimum": 0, "maximum": 256, "default": 4,
                        "description": "held-out prompts completed greedily each time (0: no generation checks)"},
            "max_new_tokens": {"type": "integer", "minimum": 1, "maximum": 4096, "default": 48,
                               "description": "the cap of each greedy completion"},
        },
    },
    "launch": {
        "type": "object", "additionalProperties": False,
        "description": "prefpilot: where `prefpilot runs launch` (and MCP launch_run) starts the run: here (backend "
                       "local, the default) or as a Slurm batch job; the CLI's --backend/--nodes/... override it",
        "properties": {
            "backend": {"enum": ["local", "slurm"], "default": "local",
                        "description": "local: a detached process here; slurm: sbatch, one accelerate launch per node"},
            "nodes": {"type": "integer", "minimum": 1, "maximum": 4096, "default": 1,
                      "description": "Slurm nodes; ranks, main address and port come from Slurm"},
            "gpus_per_node": {"type": "integer", "minimum": 0, "maximum": 64,
                              "description": "GPUs (= processes) per node; 0: CPU nodes, one process each (gloo); "
                                             "default 1 where this machine has nvidia-smi, else 0"},
            "partition": {"type": "string", "pattern": "^[A-Za-z0-9._:+-]{1,64}$", "description": "Slurm partition"},
            "account": {"type": "string", "pattern": "^[A-Za-z0-9._:+-]{1,64}$", "description": "Slurm account"},
            "time": {"type": "string", "pattern": "^[0-9][0-9:-]{0,15}$",
                     "description": "Slurm time limit (minutes, HH:MM:SS, D-HH:MM:SS); default from max_wall_time "
                                    "plus 10 minutes; SIGTERM goes out up to 2 minutes before it (checkpoint, stop)"},
            "requeue": {"type": "boolean", "default": True,
                        "description": "a requeued or preempted job continues from its checkpoint"},
            "fsdp_config_file": {"type": "string", "minLength": 1,
                                 "description": "an accelerate config file with FSDP settings, passed to every "
                                                "node's accelerate launch (e.g. TRL's fsdp2.yaml)"},
            "deepspeed_config_file": {"type": "string", "minLength": 1,
                                      "description": "a DeepSpeed JSON config (e.g. ZeRO-3), passed to every node's "
                                                     "accelerate launch"},
        },
    },
    "max_wall_time": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_SECONDS, "x-code": "range",
                      "x-message": f"max_wall_time must be a number of seconds > 0 and at most {MAX_SECONDS}",
                      "description": "prefpilot: a lease in seconds of training: once spent, the run saves a checkpoint "
                                     "and ends cancelled (resume continues it); for unattended runs"},
    "diagnose": {
        "type": "object", "additionalProperties": False,
        "description": "prefpilot: live diagnosis during training (the rules of `prefpilot diagnose` on the history "
                       "so far; current findings in status.json).",
        "properties": {
            "stop_on": {"enum": ["never", "nonfinite", "error", "warning"], "default": "nonfinite",
                        "description": "which findings stop the run with a checkpoint: NaN/inf only (default), "
                                       "any error-level finding, any warning or error, or none"},
            "min_steps": {"type": "integer", "minimum": 0, "maximum": MAX_STEPS, "default": 10,
                          "description": "trend findings may stop the run only after this many steps "
                                         "(one-row signatures stop it at once)"},
            "every_s": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_SECONDS, "default": 10,
                        "description": "seconds between diagnoses (a row with NaN/inf is diagnosed at once)"},
        },
    },
}
SIMPO_FIELDS = {
    "gamma_beta_ratio": {"type": "number", "minimum": 0, "x-code": "range",
                         "x-message": "gamma_beta_ratio (γ/β) must be ≥ 0; the SimPO authors search 0 to 1",
                         "description": "SimPO paper: target reward margin divided by beta; simpo_gamma = gamma_beta_ratio × beta."},
    "sft_weight": {"type": "number", "minimum": 0,
                   "description": "SimPO paper: weight of the SFT (NLL) term; TRL's cpo_alpha."},
    # Written by normalisation (loss_type: hinge -> loss_type: simpo + simpo_loss: hinge) so that a run
    # dir's config.yaml validates again on resume.
    "simpo_loss": {"enum": ["sigmoid", "hinge"],
                   "description": "prefpilot: the SimPO loss shape after normalisation; users set loss_type: sigmoid|hinge."},
}


def _json_type(tp) -> dict:
    """JSON Schema for a dataclass field annotation; {} where it cannot be pinned down."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        subs = [_json_type(a) for a in typing.get_args(tp)]
        if any(s == {} for s in subs):
            return {}
        flat = []
        for s in subs:
            if s not in flat:
                flat.append(s)
        return flat[0] if len(flat) == 1 else {"anyOf": flat}
    if tp is type(None):
        return {"type": "null"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"enum": [m.value for m in tp]}
    if origin is list or tp is list:
        args = typing.get_args(tp)
        return {"type": "array", "items": _json_type(args[0])} if args else {"type": "array"}
    if origin is dict or tp is dict:
        return {"type": "object"}
    if origin is typing.Literal:
        return {"enum": list(typing.get_args(tp))}
    return {}


def _jsonable(v):
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


def field_schemas(classes) -> tuple[dict, dict]:
    props, sources = {}, {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name.startswith("_") or f.name in props:
                continue
            s = dict(_json_type(hints.get(f.name, f.type)))
            if f.metadata.get("choices"):
                s = {"enum": list(f.metadata["choices"])}
            if f.default is not dataclasses.MISSING and _jsonable(f.default):
                d = f.default.value if isinstance(f.default, enum.Enum) else f.default
                s["default"] = d
            if f.metadata.get("help"):
                s["description"] = " ".join(f.metadata["help"].split())
            props[f.name] = s
            sources[f.name] = cls.__name__
    return props, sources


def dpo_loss_types() -> list[str]:
    from trl import DPOConfig
    return re.findall(r"`'(\w+)'`", DPOConfig.__dataclass_fields__["loss_type"].metadata["help"])


def _c(schema: dict, code: str, message: str) -> dict:
    """Attach the finding code and message the validator reports when this constraint fails."""
    return {**schema, "x-code": code, "x-message": message}


def _uses(loss: str) -> dict:
    """`if` clause: the config's loss_type (a string or a list) includes `loss`."""
    return {"properties": {"loss_type": {"anyOf": [{"const": loss}, {"type": "array", "contains": {"const": loss}}]}},
            "required": ["loss_type"]}


def _bounded(props: dict, key: str, low, high, note: str = "") -> None:
    """An integer or number field from ``low`` (None: no lower bound) to ``high``, with one message for both."""
    if key not in props:  # a field only one trainer has (precompute_ref_batch_size, max_completion_length)
        return
    kind = "an integer" if "integer" in json.dumps(props[key]) else "a number"
    span = f"from {low} to {high}" if low is not None else f"at most {high}"
    props[key].update(_c({"maximum": high, **({"minimum": low} if low is not None else {})}, "range",
                         f"{key} must be {kind} {span}{note}"))


def common_constraints(props: dict) -> None:
    # Upper bounds (config/limits.py says why each): a value no run uses is refused here, by name, instead of
    # overflowing a float or a C long in the estimate or at train time.
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size"):
        _bounded(props, key, 1, MAX_BATCH)
    _bounded(props, "precompute_ref_batch_size", 1, MAX_BATCH)
    _bounded(props, "gradient_accumulation_steps", 1, MAX_ACCUMULATION)
    _bounded(props, "eval_accumulation_steps", 1, MAX_ACCUMULATION)
    props["beta"].update(_c({"exclusiveMinimum": 0}, "range", "beta must be > 0"))
    props["learning_rate"].update(_c({"exclusiveMinimum": 0}, "range", "learning_rate must be > 0"))
    props["num_train_epochs"].update(_c({"exclusiveMinimum": 0, "maximum": MAX_EPOCHS}, "range",
                                        f"num_train_epochs must be > 0 and at most {MAX_EPOCHS}"))
    _bounded(props, "max_steps", -1, MAX_STEPS, " (-1: as many as num_train_epochs takes)")
    # the range beside anyOf, not inside its integer branch: an out-of-range integer then fails the range (with
    # its message), rather than both branches with the "not of type 'null'" one chosen to report
    props["max_length"] = {**props["max_length"], "anyOf": [{"type": "integer"}, {"type": "null"}],
                           **_c({"minimum": 8, "maximum": MAX_TOKENS}, "range",
                                f"max_length must be an integer from 8 to {MAX_TOKENS}, or null for no truncation")}
    props["max_length"].pop("type", None)
    _bounded(props, "max_completion_length", 1, MAX_TOKENS)
    props["warmup_steps"].update(_c({"minimum": 0, "maximum": MAX_STEPS}, "range",
                                    f"warmup_steps must be from 0 to {MAX_STEPS} (a value below 1 is a ratio of "
                                    "the total steps)"))
    for key in ("logging_steps", "save_steps", "eval_steps"):  # a count, or a ratio of the total steps below 1
        _bounded(props, key, 0, MAX_STEPS, " (a value below 1 is a ratio of the total steps)")
    _bounded(props, "torch_empty_cache_steps", 1, MAX_STEPS)
    _bounded(props, "ref_model_sync_steps", 1, MAX_STEPS)
    for key in ("dataloader_num_workers", "dataset_num_proc", "dataloader_prefetch_factor"):
        _bounded(props, key, 0, MAX_WORKERS)
    for key in ("seed", "data_seed"):
        _bounded(props, key, 0, MAX_SEED, " (numpy's seed range)")
    _bounded(props, "ddp_timeout", 1, MAX_SECONDS, " seconds")
    props["lora_dropout"].update(_c({"minimum": 0, "maximum": 1}, "range", "lora_dropout must be in [0, 1]"))
    props["lora_target_modules"]["anyOf"].append({"type": "string"})  # peft accepts "all-linear"
    _bounded(props, "lora_r", 1, MAX_RANK)
    _bounded(props, "lora_alpha", None, MAX_RANK)


def build_dpo() -> dict:
    from trl import DatasetMixtureConfig, DPOConfig, ModelConfig, ScriptArguments
    props, sources = field_schemas([ScriptArguments, DPOConfig, ModelConfig, DatasetMixtureConfig])
    losses = dpo_loss_types()
    props["loss_type"] = {**{k: v for k, v in props["loss_type"].items() if k not in ("type", "items")},
                          "anyOf": [_c({"enum": losses}, "unknown_loss_type", "unknown loss_type"),
                                    {"type": "array", "minItems": 1,
                                     "items": _c({"enum": losses}, "unknown_loss_type", "unknown loss_type")}]}
    props["ld_alpha"].update(_c({"minimum": 0, "maximum": 1}, "range", "ld_alpha must be in [0, 1] (LD-DPO's α)"))
    props["discopop_tau"].update(_c({"exclusiveMinimum": 0}, "range", "discopop_tau must be > 0"))
    props["label_smoothing"].update(_c({"minimum": 0, "exclusiveMaximum": 1}, "range", "label_smoothing must be in [0, 1)"))
    props["ref_model_mixup_alpha"].update(_c({"minimum": 0, "maximum": 1}, "range", "ref_model_mixup_alpha must be in [0, 1]"))
    props["ref_model_sync_steps"].update(_c({"minimum": 1}, "range", "ref_model_sync_steps must be ≥ 1"))
    props["loss_weights"].update({"items": _c({"type": "number", "minimum": 0}, "range", "loss_weights must be ≥ 0")})
    common_constraints(props)
    props.update(PREFPILOT_FIELDS)
    props["method"] = {**PREFPILOT_FIELDS["method"], "enum": ["dpo"]}
    rules = [
        {"if": _uses("robust"), "then": {"properties": {"label_smoothing": _c(
            {"exclusiveMaximum": 0.5}, "range",
            "for loss_type robust, label_smoothing is the label-flip probability and must be in [0, 0.5); 0.1 is typical")}}},
        {"if": _uses("exo_pair"), "then": {"required": ["label_smoothing"], "properties": {"label_smoothing": _c(
            {"exclusiveMinimum": 0}, "range",
            "exo_pair needs label_smoothing > 0 (log ε is infinite at 0); the EXO paper uses 1e-3")}}},
    ]
    return _wrap("dpo", props, sources, rules)


def build_simpo() -> dict:
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments
    from trl.experimental.cpo import CPOConfig
    props, sources = field_schemas([ScriptArguments, CPOConfig, ModelConfig, DatasetMixtureConfig])
    props["loss_type"] = {**props["loss_type"], "enum": ["sigmoid", "hinge", "simpo"],
                          "x-code": "unknown_loss_type",
                          "x-message": "SimPO loss_type must be sigmoid (the SimPO loss) or hinge; TRL's simpo means sigmoid",
                          "default": "sigmoid"}
    props["label_smoothing"].update(_c({"minimum": 0, "exclusiveMaximum": 0.5}, "range", "label_smoothing must be in [0, 0.5)"))
    props["simpo_gamma"].update(_c({"minimum": 0}, "range", "simpo_gamma (γ) must be ≥ 0"))
    props["cpo_alpha"].update(_c({"minimum": 0}, "range", "cpo_alpha (the SFT weight) must be ≥ 0"))
    common_constraints(props)
    props.update(PREFPILOT_FIELDS)
    props.update(SIMPO_FIELDS)
    props["method"] = {**PREFPILOT_FIELDS["method"], "enum": ["simpo"]}
    for k in SIMPO_FIELDS:
        sources[k] = "SimPO paper"
    return _wrap("simpo", props, sources, [])


def build_orpo() -> dict:
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments
    from trl.experimental.orpo import ORPOConfig
    props, sources = field_schemas([ScriptArguments, ORPOConfig, ModelConfig, DatasetMixtureConfig])
    common_constraints(props)
    # ORPOConfig's beta is the paper's λ (the weight of the odds-ratio term beside the NLL term), not DPO's β
    props["beta"].update(_c({"exclusiveMinimum": 0}, "range", "beta (ORPO's λ, the odds-ratio weight) must be > 0"))
    return _one_method("orpo", props, sources)


def build_kto() -> dict:
    from trl import DatasetMixtureConfig, KTOConfig, ModelConfig, ScriptArguments
    props, sources = field_schemas([ScriptArguments, KTOConfig, ModelConfig, DatasetMixtureConfig])
    props["loss_type"] = {**props["loss_type"], "x-code": "unknown_loss_type",
                          "x-message": "KTO loss_type must be kto or apo_zero_unpaired"}
    for key in ("desirable_weight", "undesirable_weight"):
        props[key].update(_c({"exclusiveMinimum": 0, "maximum": 1000}, "range", f"{key} must be > 0 (at most 1000)"))
    props["ref_model_mixup_alpha"].update(_c({"minimum": 0, "maximum": 1}, "range", "ref_model_mixup_alpha must be in [0, 1]"))
    common_constraints(props)
    return _one_method("kto", props, sources)


def build_cpo() -> dict:
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments
    from trl.experimental.cpo import CPOConfig
    props, sources = field_schemas([ScriptArguments, CPOConfig, ModelConfig, DatasetMixtureConfig])
    props["loss_type"] = {**props["loss_type"], "x-code": "unknown_loss_type",
                          "x-message": "CPO loss_type must be one of " + ", ".join(props["loss_type"]["enum"])}
    props["label_smoothing"].update(_c({"minimum": 0, "exclusiveMaximum": 0.5}, "range", "label_smoothing must be in [0, 0.5)"))
    props["simpo_gamma"].update(_c({"minimum": 0}, "range", "simpo_gamma (γ) must be ≥ 0"))
    props["cpo_alpha"].update(_c({"minimum": 0}, "range", "cpo_alpha (the NLL/BC weight) must be ≥ 0"))
    common_constraints(props)
    return _one_method("cpo", props, sources)


BUILDERS = {"dpo": build_dpo, "simpo": build_simpo, "orpo": build_orpo, "kto": build_kto, "cpo": build_cpo}


def _one_method(method: str, props: dict, sources: dict) -> dict:
    """prefpilot's own keys added, ``method`` pinned to this trainer, and the schema wrapped (ORPO, KTO, CPO)."""
    props.update(PREFPILOT_FIELDS)
    props["method"] = {**PREFPILOT_FIELDS["method"], "enum": [method]}
    return _wrap(method, props, sources, [])


def _wrap(method, props, sources, rules) -> dict:
    import transformers
    import trl
    for k in PREFPILOT_FIELDS:
        sources[k] = "prefpilot"
    return {
        "$schema": DRAFT,
        "$id": f"https://prefpilot.dev/schemas/{method}-run-config.json",
        "title": f"prefpilot {method} run config",
        "description": "A TRL CLI config (trl dpo --config) plus prefpilot's method/hardware/dataset_path keys. "
                       "Generated by `prefpilot schemas generate`; do not edit by hand.",
        "type": "object",
        "x-generated-from": {"trl": trl.__version__, "transformers": transformers.__version__},
        "x-field-sources": dict(sorted(sources.items())),
        "properties": dict(sorted(props.items())),
        "additionalProperties": False,
        **({"allOf": rules} if rules else {}),
    }


def generate(check: bool = False) -> list[str]:
    """Write (or with ``check``, compare) the schema files; returns those that differ."""
    SCHEMA_DIR.mkdir(exist_ok=True)
    stale = []
    for method, build in BUILDERS.items():
        text = json.dumps(build(), indent=1, ensure_ascii=False, default=str) + "\n"
        path = SCHEMA_DIR / f"{method}.json"
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            stale.append(str(path))
            if not check:
                path.write_text(text, encoding="utf-8")
    return stale
