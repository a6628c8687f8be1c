"""Read a run config file (YAML or JSON) into a mapping, with errors that say what to fix."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..errors import PrefpilotError


def parse_config_text(text: str, source: str = "<config>") -> dict:
    """Parse YAML (JSON is YAML too) and insist on a non-empty mapping."""
    if not text.strip():
        raise PrefpilotError(f"{source}: the config is empty; write a YAML mapping such as `model_name_or_path: ...`",
                             code="empty_config", path="")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PrefpilotError(f"{source}: not valid YAML{where}: {problem}", code="not_yaml", path="") from None
    if not isinstance(data, dict):
        raise PrefpilotError(f"{source}: the config must be a mapping of keys to values, got a {type(data).__name__}",
                             code="not_a_mapping", path="")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise PrefpilotError(f"{source}: config keys must be strings, got {bad!r}", code="not_a_mapping", path="")
    return data


def load_config(path: str | Path) -> dict:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PrefpilotError(f"{p}: no such file", code="unreadable", path="") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PrefpilotError(f"{p}: cannot read the config ({exc})", code="unreadable", path="") from None
    if p.suffix == ".json":
        try:
            data = json.loads(text) if text.strip() else None
        except json.JSONDecodeError as exc:
            raise PrefpilotError(f"{p}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                                 code="not_json", path="") from None
        if data is None:
            return parse_config_text("", str(p))
        return parse_config_text(json.dumps(data), str(p)) if isinstance(data, dict) else parse_config_text(text, str(p))
    return parse_config_text(text, str(p))
