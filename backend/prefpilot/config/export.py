"""A prefpilot run config as a pure TRL config, for `trl dpo --config` (or a CPO script). Light: no torch.

`trl dpo --config FILE` hands every key its dataclasses do not know to `accelerate launch`, which exits 2 on
prefpilot's own keys (`method`, `hardware`, `dataset_path`, `diagnose`...). Export drops them and maps
`dataset_path` onto TRL's dataset mixture (`datasets: [{path: json, data_files: ...}]`).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import PrefpilotError
from .normalize import PREFPILOT_KEYS, normalize

BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def export_trl(config: dict) -> tuple[dict, list[str]]:
    """(TRL config, notes on what was dropped or mapped). A config that does not validate is refused: copying a
    typo or a removed key into the TRL file only moves the failure to `trl dpo`."""
    from .validate import validate
    report = validate(config, complete=False)
    if report["errors"]:
        raise PrefpilotError(f"the config does not validate ({len(report['errors'])} error(s)); nothing was exported",
                             code="invalid_config", details=report)
    cfg, notes = normalize(config)
    method = cfg["method"]
    out = {k: v for k, v in cfg.items() if k not in PREFPILOT_KEYS}
    from .policy import secret_keys, split_secrets
    secrets = secret_keys(out)
    if secrets:  # an exported file is made to be shared or committed: a token must not travel in it
        out = split_secrets(out)[0]
        notes.append(f"left out {', '.join(secrets)}: a secret does not belong in a config file; set HF_TOKEN in "
                     "the environment instead")
    dropped = sorted(k for k in cfg if k in PREFPILOT_KEYS and k not in ("method", "dataset_path"))
    if dropped:
        notes.append(f"dropped prefpilot-only keys: {', '.join(dropped)}")
    dp = cfg.get("dataset_path")
    if isinstance(dp, str) and dp:
        if dp.startswith("builtin:"):
            from ..data import builtin_files
            files = builtin_files(dp[8:])
            data_files = {split: str(p) for split, p in files.items()}
            out["datasets"] = [{"path": "json", "data_files": data_files["train"], "split": "train"}]
            notes.append(f"dataset_path {dp} -> the packaged file {data_files['train']}")
        else:
            p = Path(dp).expanduser().resolve()
            builder = BUILDERS.get(p.suffix.lower())
            if builder is None:
                raise PrefpilotError(f"dataset_path {dp}: TRL's dataset mixture reads .jsonl/.json/.csv/.parquet",
                                     code="dataset_format")
            out["datasets"] = [{"path": builder, "data_files": str(p), "split": "train"}]
            notes.append(f"dataset_path {dp} -> datasets: [{{path: {builder}, data_files: {p}}}]")
    if not out.get("use_cpu") and "bf16" not in out and "fp16" not in out:
        notes.append("TRL turns bf16 on by default and transformers refuses bf16 without a bf16 GPU unless "
                     "use_cpu is set (`prefpilot train` sets it on a machine without CUDA; this file does not): "
                     "on a CPU add use_cpu: true and bf16: false")
    if method == "cpo":
        notes.append("CPO runs through TRL's experimental CPOTrainer (trl.experimental.cpo), which has no `trl` CLI "
                     "command: parse this file with TrlParser((ScriptArguments, CPOConfig, ModelConfig, "
                     "DatasetMixtureConfig)) in your own script")
    if method == "simpo":
        notes.append("SimPO runs through TRL's experimental CPOTrainer (loss_type simpo), which has no `trl` CLI "
                     "command: parse this file with TrlParser((ScriptArguments, CPOConfig, ModelConfig, "
                     "DatasetMixtureConfig)) in your own script")
        if cfg.get("simpo_loss") == "hinge":
            notes.append("simpo_loss hinge is prefpilot's (TRL's CPO hinge has no γ): TRL will train the sigmoid form")
    elif method == "orpo":
        notes.append("ORPO runs through TRL's experimental ORPOTrainer (trl.experimental.orpo), which has no `trl` "
                     "CLI command and no script in TRL 1.16: parse this file with TrlParser((ScriptArguments, "
                     "ORPOConfig, ModelConfig, DatasetMixtureConfig)) in your own script and pass the dataset to "
                     "ORPOTrainer (DPO's paired format)")
    elif method == "kto":
        notes.append("run it with: trl kto --config <this file> (TRL's scripts/kto.py: KTOTrainer; paired data is "
                     "unpaired by TRL itself, chosen rows of each 1000-row chunk before its rejected rows)")
    else:
        notes.append("run it with: trl dpo --config <this file>")
    return out, notes
