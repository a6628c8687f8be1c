import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")          # nothing in the suite may reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model (tests/tiny_model.py), built once per test module."""
    from tiny_model import build_tiny_model
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def offline(monkeypatch):
    """No hub, whatever the caller's environment says (modules that start runs use it for every test)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
