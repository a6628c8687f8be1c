"""Training memory estimate for a preference-optimisation run, from arithmetic only.

Per device, in GB (1e9 bytes):
  weights     P × bytes(load dtype); QLoRA: 0.55 bytes/param (4-bit NF4 + quantisation constants)
  reference   one more copy of the weights for DPO and KTO, unless PEFT (adapter disabled = reference),
              precomputed reference log-probs; none for SimPO and ORPO (reference-free)
  gradients   trainable params × 4 bytes (fp32 master grads) for full training in fp32,
              × bytes(dtype) when the weights are loaded in half precision
  optimizer   trainable params × bytes per param of the optimizer state (AdamW: 8, 8-bit Adam: 2, SGD: 4, Adafactor: ~4)
  activations tokens × layers × hidden × k bytes, tokens = 2 (chosen+rejected) × batch × max_length
              (KTO: its batch of unpaired rows plus their mismatched KL completions, also 2 × batch × max_length);
              k ≈ 34 × bytes(compute)/2 without gradient checkpointing (Korthikanti et al. 2022,
              arXiv:2205.05198, attention-score term dropped: SDPA/flash kernels do not store it),
              and 2 × bytes(compute) (one saved layer input per layer) with it
  lm head     DPO (TRL 1.x) scores tokens through a fused LM head that never holds the [tokens, vocab]
              logits: it works on tiles of min(tokens, 4096) × min(vocab, 32768). With Triton (CUDA) one tile in
              the compute dtype is live; on a CPU the torch fallback keeps ~11 fp32 tile-sized temporaries
              (44 bytes per tile cell, fitted with bench/memory_estimate.py). Its backward adds fp32 gradients
              for the hidden states (tokens × hidden) and, when the head is trained, the head (vocab × hidden).
              KTO uses the same fused head. SimPO and ORPO go through TRL's CPO/ORPO trainers, which materialise the full logits: tokens × vocab ×
              bytes(compute) × 6 (the logits, then in backward the log-sum-exp gradient, the gather's scatter,
              the shifted view's padded gradient and their sums; fitted on a CPU, likely high on a GPU).
  sharding    with several GPUs, weights/gradients/optimizer states are divided by their number (FSDP/ZeRO-3)
  overhead    1.0 GB CUDA context and allocator slack on a GPU, 0.6 GB interpreter + torch on a CPU
Peak = weights + reference + optimizer states + master weights + overhead + the larger of
(activations + lm head) and gradients: the Trainer frees gradients (set_to_none) before each forward, so
they only grow as backward frees activations. With gradient accumulation > 1 they persist and are added.
The figures are a planning aid, meant to be within 25% (bench/memory_estimate.py compares them with
measured peaks).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

GB = 1e9
DTYPE_BYTES = {"float32": 4, "fp32": 4, "auto": 4, None: 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
# TRL 1.x fused LM head tile (trl.kernels.chunked_logprob.TOKEN_CHUNK_SIZE, trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE)
TILE_TOKENS, TILE_VOCAB = 4096, 32768
CPU_TILE_BYTES = 44  # bytes per tile cell on a CPU, fitted to measured peaks (see the docstring)
SIMPO_LOGIT_COPIES = 6  # logits-sized tensors live at once in CPO's backward, fitted like CPU_TILE_BYTES
OPTIMIZER_BYTES = {"adamw": 8, "adam": 8, "adamw_8bit": 2, "adamw_bnb_8bit": 2, "paged_adamw_8bit": 2,
                   "adamw_torch_8bit": 2, "adamw_torch_4bit": 1, "sgd": 4, "adafactor": 4, "adagrad": 4, "lion": 4}

# Parameter counts of common models (from their model cards/configs), used when no config is on disk.
KNOWN_MODELS = {
    "smollm2-135m": (0.1345e9, {"hidden_size": 576, "num_hidden_layers": 30, "vocab_size": 49152}),
    "smollm2-360m": (0.362e9, {"hidden_size": 960, "num_hidden_layers": 32, "vocab_size": 49152}),
    "smollm2-1.7b": (1.71e9, {"hidden_size": 2048, "num_hidden_layers": 24, "vocab_size": 49152}),
    "qwen2.5-0.5b": (0.494e9, {"hidden_size": 896, "num_hidden_layers": 24, "vocab_size": 151936}),
    "qwen2.5-1.5b": (1.54e9, {"hidden_size": 1536, "num_hidden_layers": 28, "vocab_size": 151936}),
    "qwen2.5-7b": (7.62e9, {"hidden_size": 3584, "num_hidden_layers": 28, "vocab_size": 152064}),
    "llama-3-8b": (8.03e9, {"hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 128256}),
    "llama-3.1-8b": (8.03e9, {"hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 128256}),
    "llama-3.2-1b": (1.24e9, {"hidden_size": 2048, "num_hidden_layers": 16, "vocab_size": 128256}),
    "llama-3.2-3b": (3.21e9, {"hidden_size": 3072, "num_hidden_layers": 28, "vocab_size": 128256}),
    "llama-3-70b": (70.6e9, {"hidden_size": 8192, "num_hidden_layers": 80, "vocab_size": 128256}),
    "mistral-7b": (7.24e9, {"hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 32000}),
    "zephyr-7b": (7.24e9, {"hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 32000}),
    "gemma-2-9b": (9.24e9, {"hidden_size": 3584, "num_hidden_layers": 42, "vocab_size": 256000}),
    "gemma-2-2b": (2.61e9, {"hidden_size": 2304, "num_hidden_layers": 26, "vocab_size": 256000}),
}


def params_from_config(cfg: dict) -> float:
    """Parameter count of a decoder-only transformer from its config.json."""
    h, L, V = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    inter = cfg.get("intermediate_size", 4 * h)
    heads = cfg.get("num_attention_heads", max(1, h // 64))
    kv = cfg.get("num_key_value_heads", heads)
    head_dim = cfg.get("head_dim") or h // heads
    attn = h * heads * head_dim * 2 + h * kv * head_dim * 2
    mlp = 3 * h * inter  # gated MLP (Llama-style); close enough for GPT-style 2-matrix MLPs at 4h
    embed = V * h * (1 if cfg.get("tie_word_embeddings", True) else 2)
    return float(embed + L * (attn + mlp + 2 * h) + h)


def resolve_model_size(config: dict) -> dict:
    """{'params', 'arch', 'source'} or {'params': None, 'source': why not}. No network."""
    if config.get("model_params"):
        return {"params": float(config["model_params"]), "arch": {}, "source": "model_params in the config"}
    name = str(config.get("model_name_or_path") or "")
    if not name:
        return {"params": None, "arch": {}, "source": "no model_name_or_path"}
    local = Path(name).expanduser()
    if (local / "config.json").is_file():
        try:
            cfg = json.loads((local / "config.json").read_text())
            cfg = cfg.get("text_config", cfg)
            return {"params": params_from_config(cfg), "arch": cfg, "source": f"{local / 'config.json'}"}
        except (ValueError, KeyError, OSError):
            pass
    key = name.lower().split("/")[-1]
    for known, (p, arch) in sorted(KNOWN_MODELS.items(), key=lambda kv: -len(kv[0])):
        if key.startswith(known):
            return {"params": p, "arch": arch, "source": f"prefpilot's table of known models ({known})"}
    m = re.search(r"(\d+(?:\.\d+)?)\s*([bm])\b", key.replace("-", " ").replace("_", " "))
    if m:
        p = float(m.group(1)) * (1e9 if m.group(2) == "b" else 1e6)
        return {"params": p, "arch": {}, "source": f"parsed from the model name ({m.group(0)})"}
    return {"params": None, "arch": {}, "source": f"size of {name!r} unknown: add model_params (e.g. 7e9)"}


def _arch_guess(params: float) -> dict:
    """Hidden size/layers of a typical dense model of this size (for the activation term)."""
    for p, h, L, V in ((0.2e9, 576, 30, 49152), (0.6e9, 1024, 24, 151936), (2e9, 2048, 24, 128256),
                       (4e9, 3072, 28, 128256), (10e9, 4096, 32, 128256), (40e9, 5120, 60, 152064)):
        if params <= p:
            return {"hidden_size": h, "num_hidden_layers": L, "vocab_size": V}
    return {"hidden_size": 8192, "num_hidden_layers": 80, "vocab_size": 128256}


def lora_trainable(params: float, arch: dict, r: int, targets) -> float:
    """LoRA adds r × (d_in + d_out) per adapted matrix; ~4 attention + 3 MLP matrices per layer for all-linear."""
    h, L = arch["hidden_size"], arch["num_hidden_layers"]
    inter = arch.get("intermediate_size", int(2.7 * h))
    n_attn = 4 if targets in (None, "all-linear") else sum(t in targets for t in ("q_proj", "k_proj", "v_proj", "o_proj"))
    n_mlp = 3 if targets == "all-linear" else (0 if targets is None else
                                              sum(t in targets for t in ("gate_proj", "up_proj", "down_proj")))
    return float(L * r * (n_attn * 2 * h + n_mlp * (h + inter)))


def checkpointing_on(config: dict) -> bool:
    """transformers 5 renamed gradient_checkpointing to activation_checkpointing; the new name wins when both are
    set, and TRL 1.16's default (through the old name) is on."""
    v = config.get("activation_checkpointing")
    return bool(config.get("gradient_checkpointing", True) if v is None else v)


def estimate_memory(config: dict, hardware: dict) -> dict:
    size = resolve_model_size(config)
    if size["params"] is None:
        return {"known": False, "reason": size["source"]}
    P = size["params"]
    arch = {**_arch_guess(P), **{k: v for k, v in size["arch"].items()
                                 if k in ("hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size")}}
    method = config.get("method", "dpo")
    gpu = bool(hardware.get("gpu_memory_gb"))
    # TRL (ModelConfig.dtype, create_model_from_path) and `prefpilot train` load float32 unless `dtype` is set;
    # bf16: true is autocast only, so the weights (and the reference's) still take 4 bytes per parameter
    load_dtype = config.get("dtype") or "float32"
    half = bool(config.get("bf16") or config.get("fp16"))
    wbytes = DTYPE_BYTES.get(load_dtype, 4)
    peft = bool(config.get("use_peft"))
    qlora = peft and bool(config.get("load_in_4bit"))
    weights = P * (0.55 if qlora else wbytes)
    reference = 0.0
    if method in ("dpo", "kto") and not peft and not config.get("precompute_ref_log_probs"):
        reference = P * wbytes
    trainable = lora_trainable(P, arch, int(config.get("lora_r", 16)), config.get("lora_target_modules")) if peft else P
    grads = trainable * (4 if peft else wbytes)
    optim = str(config.get("optim", "adamw_torch"))
    obytes = next((v for k, v in sorted(OPTIMIZER_BYTES.items(), key=lambda kv: -len(kv[0])) if k in optim), 8)
    optimizer = trainable * obytes
    master = trainable * 4 if (not peft and wbytes == 2) else 0.0  # fp32 master copy when training half weights
    batch = int(config.get("per_device_train_batch_size", 8))
    seq = int(config.get("max_length") or 1024)
    tokens = 2 * batch * seq
    cbytes = 2 if (half or wbytes == 2) else 4
    ckpt = checkpointing_on(config)
    h, L, V = arch["hidden_size"], arch["num_hidden_layers"], arch["vocab_size"]
    per_token_layer = (2 * cbytes) if ckpt else (34 * cbytes / 2)
    activations = tokens * L * h * per_token_layer + (tokens * h * 34 * cbytes / 2 if ckpt else 0)
    if method in ("simpo", "orpo", "cpo"):  # TRL's CPO and ORPO trainers build the full logits
        lm_head = tokens * V * cbytes * SIMPO_LOGIT_COPIES
    else:
        tile = min(tokens, TILE_TOKENS) * min(V, TILE_VOCAB) * (cbytes if gpu else CPU_TILE_BYTES)
        lm_head = tile + tokens * h * 4 + (0 if peft else V * h * 4)
    overhead = 1.0 * GB if gpu else 0.6 * GB
    # Several GPUs: assume FSDP full-shard / ZeRO-3 (what `prefpilot train --launcher accelerate --fsdp` sets up),
    # which splits weights, gradients and optimizer states across devices; activations stay per device.
    shards = int(hardware.get("num_gpus") or 1) if gpu else 1
    weights, reference, grads, optimizer, master = (x / shards for x in (weights, reference, grads, optimizer, master))
    parts = {"weights": weights, "reference_model": reference, "gradients": grads, "optimizer_states": optimizer,
             "master_weights": master, "activations": activations, "lm_head": lm_head, "overhead": overhead}
    accumulate = int(config.get("gradient_accumulation_steps") or 1) > 1
    transient = activations + lm_head + grads if accumulate else max(activations + lm_head, grads)
    total = weights + reference + optimizer + master + overhead + transient
    return {
        "known": True, "model_params": P, "model_size_source": size["source"],
        "total_gb": round(total / GB, 2), "parts_gb": {k: round(v / GB, 3) for k, v in parts.items()},
        "assumptions": {"method": method, "load_dtype": load_dtype, "peft": peft, "qlora": qlora,
                        "trainable_params": trainable, "reference_in_memory": reference > 0,
                        "gradient_checkpointing": bool(ckpt), "optimizer": optim, "tokens_per_step": tokens,
                        "per_device_train_batch_size": batch, "max_length": seq,
                        "sharded_over_gpus": shards,
                        "gradients_coexist_with_activations": accumulate,
                        "lm_head": "full logits (CPO/ORPO trainer)" if method in ("simpo", "orpo", "cpo") else
                                   f"TRL fused LM head, {'Triton' if gpu else 'torch fallback'} tiles"},
        "device_memory_gb": hardware.get("gpu_memory_gb") or hardware.get("ram_gb"),
        "device": "gpu" if gpu else "cpu",
    }
