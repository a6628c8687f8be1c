"""The skills and the MCP server as hermes-agent (PyPI) sees them: `hermes skills list` after sync, edit,
--reset and --uninstall, and `hermes mcp test` discovering every tool.

hermes-agent pins its own versions of many packages, so it lives in its own environment: install it with
`python -m venv .hermes && .hermes/bin/pip install 'hermes-agent[mcp]'` and point PREFPILOT_HERMES at
.hermes/bin/hermes (or put `hermes` on PATH). Without it these tests skip and say so."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HERMES = os.environ.get("PREFPILOT_HERMES") or shutil.which("hermes")
pytestmark = pytest.mark.skipif(not HERMES, reason="hermes-agent is not installed (set PREFPILOT_HERMES to its "
                                                   "`hermes`; see this file's docstring)")


def hermes(home, *args):
    p = subprocess.run([HERMES, *args], env={**os.environ, "HERMES_HOME": str(home), "NO_COLOR": "1"},
                       capture_output=True, text=True, timeout=180)
    return p.stdout + p.stderr


def listed(home) -> list[tuple[str, str]]:
    """(name, category) rows of `hermes skills list`."""
    return re.findall(r"^│\s*([a-z0-9-]+)\s*│\s*([^\s│]+)\s*│", hermes(home, "skills", "list"), re.M)


def sync(home, *args):
    subprocess.run([sys.executable, str(ROOT / "sync.py"), "--target", str(home / "skills"), *args], check=True,
                   capture_output=True, timeout=120)


def test_hermes_lists_each_skill_once_in_its_category(tmp_path):
    home = tmp_path / "hermes"
    sync(home)
    want = [("preference-diagnostics", "mlops"), ("simpo", "mlops"), ("trl-fine-tuning", "mlops")]
    assert sorted(listed(home)) == want
    with open(home / "skills/mlops/simpo/SKILL.md", "a") as fh:
        fh.write("\nmy note\n")
    sync(home, "--reset", "simpo")  # the edited copy becomes a backup under .prefpilot/: not a second simpo
    assert sorted(listed(home)) == want
    sync(home, "--uninstall")
    assert listed(home) == []


def test_hermes_mcp_test_discovers_every_tool(tmp_path):
    home = tmp_path / "hermes"
    (home / "ws").mkdir(parents=True)
    (home / "config.yaml").write_text(
        f"mcp_servers:\n  prefpilot:\n    command: {sys.executable}\n"
        f"    args: [\"-m\", \"prefpilot.cli\", \"mcp\", \"--workspace\", \"{home / 'ws'}\"]\n")
    out = hermes(home, "mcp", "test", "prefpilot")
    assert "Connected" in out and "Tools discovered: 14" in out, out[-2000:]
