"""The `prefpilot` command: parse arguments, call the library, print results.

No logic lives here that the MCP server would need too; both call the same
functions. Heavy imports happen inside the subcommands that need them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import PrefpilotError


def _print(obj, as_json: bool, human) -> None:
    print(json.dumps(obj, indent=2, default=str) if as_json else human(obj))


# ----------------------------------------------------------------------------- skills / sync
def cmd_skills(args) -> int:
    from . import skills
    if args.skills_cmd == "list":
        _print(skills.list_skills(), args.json,
               lambda rows: "\n".join(f"{r['name']:24} {r['version']:8} {r['description'][:70]}" for r in rows))
    elif args.skills_cmd == "show":
        print(skills.read_skill(args.name, args.file))
    elif args.skills_cmd == "render":
        stale = skills.render(check=args.check)
        if args.check and stale:
            print("out of date (run `prefpilot skills render`):\n  " + "\n  ".join(stale))
            return 1
        print("tables " + ("up to date" if not stale else "rewritten: " + ", ".join(stale)))
    return 0


def cmd_sync(args, rest) -> int:
    """Forward to the bundle's stdlib sync.py so there is one implementation."""
    import importlib.util
    from .skills import bundle_root
    path = bundle_root() / "sync.py"
    spec = importlib.util.spec_from_file_location("prefpilot_sync", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(rest + ["--bundle", str(bundle_root())])


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="prefpilot", description="Preference optimisation (DPO, SimPO) you can trust.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    sk = sub.add_parser("skills", help="list, show or render the bundled skills")
    sks = sk.add_subparsers(dest="skills_cmd", required=True)
    p = sks.add_parser("list")
    p.add_argument("--json", action="store_true")
    p = sks.add_parser("show")
    p.add_argument("name")
    p.add_argument("file", nargs="?", default="SKILL.md")
    p = sks.add_parser("render", help="regenerate the hyperparameter tables from their YAML")
    p.add_argument("--check", action="store_true", help="exit 1 if a table is out of date; write nothing")

    sub.add_parser("sync", help="install/update the skills (same flags as `python sync.py`)", add_help=False)
    return ap


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sync"]:
        return cmd_sync(None, argv[1:])
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        return {"skills": cmd_skills}[args.cmd](args)
    except PrefpilotError as exc:
        print(f"prefpilot: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
