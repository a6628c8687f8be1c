"""Read a run config file (YAML or JSON) into a mapping, with errors that say what to fix."""
from __future__ import annotations

import json
import stat
from pathlib import Path

import yaml

from ..errors import PrefpilotError

# A run config is a page of keys. These bounds keep a hostile or broken file (a 0.5 KB "billion laughs"
# alias bomb expands to gigabytes) from costing more than a readable error.
MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 20


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases: `*name` can expand a few bytes into gigabytes, and a run
    config has no use for them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"aliases (*{event.anchor}) are not allowed in a run config: write the value out",
                event.start_mark)
        return super().compose_node(parent, index)


def _depth(obj, limit: int) -> int:
    """Nesting depth of lists/dicts, counted without recursion (stops once past ``limit``)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (dict, list)):
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return deepest


def config_object_problem(obj, source: str = "the config") -> PrefpilotError | None:
    """The bounds YAML text gets (size, depth), for a config handed over as an object (the MCP tools take one):
    a 5 MB run_name must cost what it costs in a file, a one-line error naming the key. Counted without
    serialising: each string and key by its length, everything else by its repr, stopping once past the cap."""
    size, per_key = 0, {}
    stack = [(v, 2, k) for k, v in obj.items()] if isinstance(obj, dict) else [(obj, 1, "")]
    while stack:
        o, d, top = stack.pop()
        if d > MAX_DEPTH:
            return PrefpilotError(f"{source}: `{str(top)[:60]}` is nested more than {MAX_DEPTH} levels deep (a run "
                                  "config is a flat mapping of keys)", code="too_deep", path=f"/{top}")
        n = 4 + (len(top) if isinstance(top, str) and d == 2 else 0)  # quotes, colon, comma; a top-level key
        if isinstance(o, dict):
            n += 2 + 4 * len(o) + sum(len(k) if isinstance(k, str) else 8 for k in o)
            stack.extend((v, d + 1, top) for v in o.values())
        elif isinstance(o, (list, tuple)):
            n += 2 + 2 * len(o)
            stack.extend((v, d + 1, top) for v in o)
        elif isinstance(o, str):
            n += len(o)
        else:  # a number, a bool, None (a huge int is not turned into text: validate refuses it by name)
            n += len(repr(o)) if not isinstance(o, int) or o.bit_length() < 256 else 80
        size += n
        per_key[top] = per_key.get(top, 0) + n
        if size > MAX_CONFIG_BYTES:
            key, big = max(per_key.items(), key=lambda kv: kv[1])
            return PrefpilotError(f"{source}: over {MAX_CONFIG_BYTES} characters as text (`{str(key)[:60]}` alone "
                                  f"is {big} so far); a run config is at most {MAX_CONFIG_BYTES}, as a file or an "
                                  "object: shorten that value", code="too_large", path=f"/{key}")
    return None


def safe_yaml(text: str, source: str):
    """YAML (or JSON) text -> Python data, bounded in size, aliases and depth; PrefpilotError otherwise."""
    if len(text) > MAX_CONFIG_BYTES:
        raise PrefpilotError(f"{source}: {len(text)} characters; a run config is at most {MAX_CONFIG_BYTES} "
                             "(is this the right file?)", code="too_large", path="")
    try:
        data = yaml.load(text, Loader=BoundedLoader)  # noqa: S506 - BoundedLoader is a SafeLoader
    except RecursionError:
        data = None
        raise PrefpilotError(f"{source}: nested too deeply (a run config is a flat mapping of keys)",
                             code="too_deep", path="") from None
    if _depth(data, MAX_DEPTH) > MAX_DEPTH:
        raise PrefpilotError(f"{source}: nested more than {MAX_DEPTH} levels deep (a run config is a flat mapping "
                             "of keys)", code="too_deep", path="")
    return data


def parse_config_text(text: str, source: str = "<config>") -> dict:
    """Parse YAML (JSON is YAML too) and insist on a non-empty mapping."""
    if not text.strip():
        raise PrefpilotError(f"{source}: the config is empty; write a YAML mapping such as `model_name_or_path: ...`",
                             code="empty_config", path="")
    try:
        data = safe_yaml(text, source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = (getattr(exc, "problem", None) or str(exc).splitlines()[0])[:200]
        raise PrefpilotError(f"{source}: not valid YAML{where}: {problem}", code="not_yaml", path="") from None
    if not isinstance(data, dict):
        raise PrefpilotError(f"{source}: the config must be a mapping of keys to values, got a {type(data).__name__}",
                             code="not_a_mapping", path="")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise PrefpilotError(f"{source}: config keys must be strings, got {repr(bad)[:100]}", code="not_a_mapping",
                             path="")
    return data


def load_config(path: str | Path) -> dict:
    p = Path(path)
    try:
        st = p.stat()
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
            raise PrefpilotError(f"{p}: not a regular file; pass a YAML or JSON config file", code="unreadable",
                                 path="")
        if st.st_size > MAX_CONFIG_BYTES:
            raise PrefpilotError(f"{p}: {st.st_size} bytes; a run config is at most {MAX_CONFIG_BYTES} (is this the "
                                 "right file?)", code="too_large", path="")
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
        except RecursionError:
            raise PrefpilotError(f"{p}: nested too deeply (a run config is a flat mapping of keys)",
                                 code="too_deep", path="") from None
        if data is None:
            return parse_config_text("", str(p))
        return parse_config_text(json.dumps(data), str(p)) if isinstance(data, dict) else parse_config_text(text, str(p))
    return parse_config_text(text, str(p))
