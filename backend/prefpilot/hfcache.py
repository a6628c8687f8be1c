"""Where Hugging Face keeps its caches on this machine, found the way huggingface_hub and datasets find them
(HF_HUB_CACHE / HF_DATASETS_CACHE, else HF_HOME, else $XDG_CACHE_HOME/huggingface), without importing either:
the validator and the planner look there on light paths."""
from __future__ import annotations

import os
from pathlib import Path


def hf_cache_dir(kind: str) -> Path:
    """``kind`` is "hub" (models and dataset snapshots) or "datasets" (what load_dataset prepared)."""
    env = {"hub": "HF_HUB_CACHE", "datasets": "HF_DATASETS_CACHE"}[kind]
    if os.environ.get(env):
        return Path(os.environ[env]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface"
    return Path(home).expanduser() / kind
