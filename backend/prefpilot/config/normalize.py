"""Turn a run config into what TRL's config classes take.

DPO: `loss_type` becomes a list. ORPO and KTO: TRL's ORPOConfig/KTOConfig keys as they are. SimPO: the SimPO paper's names become TRL's
CPOConfig names (simpo_gamma = gamma_beta_ratio × beta, cpo_alpha = sft_weight),
and the defaults that differ between the paper and TRL are made explicit.
"""
from __future__ import annotations

# Keys prefpilot adds on top of a TRL CLI config; the trainer strips them.
PREFPILOT_KEYS = {"method", "hardware", "dataset_path", "model_params", "gamma_beta_ratio", "sft_weight", "simpo_loss",
                  "diagnose", "max_wall_time", "eval_holdout", "eval", "launch"}

# SimPO paper defaults (princeton-nlp/SimPO README): β = 2.0, γ/β = 0.5, no SFT term.
SIMPO_DEFAULT_BETA = 2.0
SIMPO_DEFAULT_RATIO = 0.5


METHODS = ("dpo", "simpo", "orpo", "kto", "cpo")  # what prefpilot trains


def method_of(config: dict) -> str:
    m = config.get("method", "dpo")
    return m if m in METHODS else "dpo"


def normalize(config: dict) -> tuple[dict, list[str]]:
    """(normalised config, notes on what was filled in or renamed)."""
    cfg = dict(config)
    notes: list[str] = []
    method = method_of(cfg)
    cfg["method"] = method
    if method == "dpo":
        if isinstance(cfg.get("loss_type"), str):
            cfg["loss_type"] = [cfg["loss_type"]]
        return cfg, notes
    if method == "orpo":  # TRL's ORPOConfig as is: beta is the odds-ratio weight λ
        b = cfg.get("beta", 0.1)
        notes.append(f"ORPO: beta {b:g} is the paper's λ, the weight of the odds-ratio term beside the NLL term "
                     "(loss = NLL(chosen) − λ·log σ(log-odds ratio)), not DPO's β (there is no reference model); "
                     "ORPOConfig's default and the paper's value are both 0.1, so a DPO config's 0.1 carries over "
                     "unchanged, but larger values (SimPO's 2.0) make the odds-ratio term outweigh the NLL"
                     if isinstance(b, (int, float)) else "ORPO: beta is the paper's λ (odds-ratio weight)")
        return cfg, notes
    if method in ("kto", "cpo"):  # TRL's KTOConfig / CPOConfig as they are
        return cfg, notes

    loss = cfg.get("loss_type", "sigmoid")
    if loss != "simpo":  # "simpo" means already normalised (a run dir's config.yaml): keep its simpo_loss
        cfg["simpo_loss"] = "hinge" if loss == "hinge" else "sigmoid"
    cfg.setdefault("simpo_loss", "sigmoid")
    cfg["loss_type"] = "simpo"  # TRL's CPO trainer in SimPO mode (average log-probs, margin γ)
    if "beta" not in cfg:
        cfg["beta"] = SIMPO_DEFAULT_BETA
        notes.append(f"beta not set: using the SimPO paper's {SIMPO_DEFAULT_BETA} (TRL's CPOConfig default 0.1 is a DPO-scale value)")
    beta = cfg["beta"]
    ratio = cfg.pop("gamma_beta_ratio", None)
    if ratio is not None and isinstance(beta, (int, float)) and isinstance(ratio, (int, float)):
        cfg["simpo_gamma"] = ratio * beta
        notes.append(f"simpo_gamma = gamma_beta_ratio × beta = {ratio} × {beta} = {cfg['simpo_gamma']:g}")
    elif "simpo_gamma" not in cfg and isinstance(beta, (int, float)):
        cfg["simpo_gamma"] = SIMPO_DEFAULT_RATIO * beta
        notes.append(f"no target margin set: simpo_gamma = 0.5 × beta = {cfg['simpo_gamma']:g} (SimPO README's starting γ/β)")
    sft = cfg.pop("sft_weight", None)
    if sft is not None:
        cfg["cpo_alpha"] = sft
    elif "cpo_alpha" not in cfg:
        cfg["cpo_alpha"] = 0.0
        notes.append("cpo_alpha = 0 (pure SimPO; TRL's default 1.0 would add an SFT term, i.e. CPO-SimPO)")
    return cfg, notes
