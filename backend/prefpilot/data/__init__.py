"""Datasets shipped with prefpilot, addressed as ``dataset_path: builtin:<name>``.

Each is a pair of JSONL files ``<name>.train.jsonl`` and ``<name>.test.jsonl`` with
``prompt``/``chosen``/``rejected`` strings. ``make_builtin.py`` wrote them.
"""
from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).parent


def builtin_names() -> list[str]:
    return sorted({p.name.split(".")[0] for p in DATA_DIR.glob("*.train.jsonl")})


def builtin_files(name: str) -> dict[str, Path]:
    """{"train": path, "test": path} of a builtin dataset."""
    files = {split: DATA_DIR / f"{name}.{split}.jsonl" for split in ("train", "test")}
    if not files["train"].is_file():
        from ..errors import PrefpilotError
        raise PrefpilotError(f"no builtin dataset {name!r}; available: {', '.join(builtin_names())}",
                             code="dataset_not_found", path="/dataset_path")
    return files
