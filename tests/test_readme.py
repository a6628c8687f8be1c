"""The README against the code (issue 28 item 13): every command it shows names options that exist, every
option of every command is shown somewhere, the commands that can run here run and print what the README
says they print, and the versions agree. Text that drifted from the code fails here, not at a user."""
import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from prefpilot.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
CLI = [sys.executable, "-m", "prefpilot.cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def commands() -> list[str]:
    """Command lines shown in the README: lines of code blocks, and inline `...` spans, that start with
    `prefpilot` or `python sync.py` (a `$ ` prompt, a trailing `# comment` and a `> file` redirection removed)."""
    out = []
    for block in re.findall(r"```[a-z]*\n(.*?)\n```", README, re.S):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            line = line.strip().removeprefix("$ ")
            if line.startswith(("prefpilot ", "python sync.py")):
                while i + 1 < len(lines) and lines[i + 1].startswith("      ") and "[" in lines[i + 1]:
                    line += " " + lines[i + 1].strip()  # a synopsis continued on the next line
                    i += 1
                out.append(line)
    out += [" ".join(m.split()) for m in re.findall(r"`((?:prefpilot|python sync\.py) [^`]+)`", README)]
    return [re.split(r"\s+#\s|\s>\s", c)[0].strip() for c in out]


def _subparsers(p: argparse.ArgumentParser) -> dict:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return a.choices
    return {}


def _walk(p, path=()):
    yield path, p
    for name, child in _subparsers(p).items():
        yield from _walk(child, (*path, name))


def _options(p) -> set[str]:
    return {o for o in p._option_string_actions if o.startswith("--")}


def _sync_options() -> set[str]:
    text = subprocess.run([sys.executable, str(ROOT / "sync.py"), "--help"], capture_output=True, text=True,
                          timeout=60).stdout
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", text))


def test_every_option_a_readme_command_shows_exists():
    parser, sync_opts = build_parser(), _sync_options()
    wrong = []
    for cmd in commands():
        opts = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", cmd))
        if cmd.startswith("python sync.py"):
            wrong += [f"{cmd!r}: {o}" for o in opts - sync_opts]
            continue
        words = [w for w in re.split(r"[\s\[\]|]+", cmd)[1:] if w]
        p, parent = parser, parser
        for w in words:  # descend through subcommands: `runs status`, `schemas show`
            if w in _subparsers(p):
                parent, p = p, _subparsers(p)[w]
        # `runs list | logs ID [--tail N] | cancel ID [--grace S]` shows siblings' options on one line
        allowed = _options(p) | _options(parent) | {o for c in _subparsers(parent).values() for o in _options(c)}
        wrong += [f"{cmd!r}: {o}" for o in opts - allowed]
    assert not wrong, "README shows options the commands do not take:\n" + "\n".join(wrong)
    assert len(commands()) > 30  # the reader found the README's commands


def test_every_option_of_every_command_is_in_the_readme():
    missing = [f"prefpilot {' '.join(path)} {o}" for path, p in _walk(build_parser()) for o in sorted(_options(p))
               if o != "--help" and o not in README]
    missing += [f"sync.py {o}" for o in sorted(_sync_options()) if o != "--help" and o not in README]
    assert not missing, "options the README never mentions:\n" + "\n".join(missing)


def test_one_version_everywhere():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    shown = subprocess.run([*CLI, "--version"], capture_output=True, text=True, timeout=60).stdout.split()[-1]
    manifest = json.loads((ROOT / "manifest.json").read_text())
    plugin = json.loads((ROOT / ".claude-plugin" / "plugin.json").read_text())
    market = json.loads((ROOT / ".claude-plugin" / "marketplace.json").read_text())
    found = {"pyproject.toml": version, "prefpilot --version": shown, "manifest.json bundle": manifest["bundle"]["version"],
             "plugin.json": plugin["version"], **{f"marketplace {p['name']}": p["version"] for p in market["plugins"]},
             **{f"skill {s['name']}": s["version"] for s in manifest["skills"]}}
    assert set(found.values()) == {version}, found


def _run(cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    argv = shlex.split(cmd)
    argv = [*CLI, *argv[1:]] if argv[0] == "prefpilot" else [sys.executable, *argv[1:]]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=cwd, env=ENV)


def _shown(cmd: str) -> str:
    """The output printed under ``$ cmd`` in the README, up to the next prompt or the end of the block."""
    for block in re.findall(r"```[a-z]*\n(.*?)\n```", README, re.S):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("$ " + cmd):
                rest = []
                for ln in lines[i + 1:]:
                    if ln.startswith("$ "):
                        break
                    rest.append(ln)
                return "\n".join(rest)
    raise AssertionError(f"the README no longer shows `$ {cmd}`")


def test_the_readme_commands_that_can_run_here_run(tmp_path):
    """Offline commands run as written (from the repository root, or from a folder where the README's own
    earlier commands wrote their files); each exits as documented and prints no traceback."""
    work = tmp_path / "w"
    work.mkdir()
    runnable = [c for c in commands() if not re.search(r"[\[\]<>|…]|\.\.\.|ID\b|RUN\b|FILE|DIR", c)
                and not re.match(r"prefpilot (demo|mcp|runs|models|train run\.yaml --launcher)\b", c)
                and "--write-manifest" not in c and len(c.split()) >= 3  # `prefpilot validate` in prose names a command
                and c not in ("prefpilot skills render", "prefpilot schemas generate")]  # they rewrite the bundle
    # the README's own plan writes the run.yaml (and the config.yaml) that the other commands read
    runnable.sort(key=lambda c: not (c.startswith("prefpilot plan") and "-o run.yaml" in c))
    ran = set()
    for cmd in runnable:
        if cmd.startswith("python sync.py"):
            continue  # sync's own CLI has its own tests (tests/test_sync.py)
        cwd = ROOT if "tests/real_logs" in cmd else work
        r = _run(cmd, cwd)
        assert "Traceback" not in r.stderr, (cmd, r.stderr[-1500:])
        expected = (0, 3, 4) if cmd.startswith("prefpilot diagnose") else (0,)
        assert r.returncode in expected, (cmd, r.returncode, r.stderr[-800:])
        ran.add(cmd.split()[1])
        if (work / "run.yaml").exists() and not (work / "config.yaml").exists():
            (work / "config.yaml").write_text((work / "run.yaml").read_text())
    assert {"plan", "validate", "diagnose", "explain", "schemas", "skills", "train"} <= ran, ran


def test_shown_outputs_match_what_the_commands_print(tmp_path):
    """Where the README shows output under a `$ command`, each line it shows (not its `...` elisions) is a line
    the command prints now."""
    for cmd, cwd in (("prefpilot diagnose tests/real_logs/trl-4023-grad-zero-rewards-zero.txt", ROOT),
                     ("prefpilot plan --method simpo --model meta-llama/Meta-Llama-3-8B-Instruct --gpu-memory-gb 80 "
                      "--num-gpus 8", tmp_path)):
        printed = _run(cmd, cwd).stdout.splitlines()
        for line in _shown(cmd).splitlines():
            if line.strip() in ("...", "# ...", "") or line.strip().startswith("..."):
                continue
            head = line.rstrip().removesuffix("...").removesuffix("…")
            cut = head != line.rstrip()  # a line the README shortens: its beginning must be printed
            assert any(p.rstrip() == line.rstrip() or (cut and p.startswith(head)) for p in printed), \
                f"`{cmd}` no longer prints:\n{line}"


def test_the_sync_json_example_has_the_keys_sync_prints(tmp_path):
    m = re.search(r"Example \(`python sync.py --target /tmp/skills --json` on a fresh folder\):\n\n```json\n(.*?)\n```",
                  README, re.S)
    shown = json.loads(m.group(1))
    r = subprocess.run([sys.executable, str(ROOT / "sync.py"), "--target", str(tmp_path / "skills"), "--json"],
                       capture_output=True, text=True, timeout=120)
    real = json.loads(r.stdout)
    assert set(shown) == set(real) and shown["copied"] == real["copied"]


@pytest.mark.parametrize("cmd", ["prefpilot explain ipo", "prefpilot explain --method simpo",
                                 "prefpilot schemas show dpo beta"])
def test_commands_the_prose_suggests_work(cmd, tmp_path):
    r = _run(cmd, tmp_path)
    assert r.returncode == 0 and r.stdout.strip(), (cmd, r.stderr)
