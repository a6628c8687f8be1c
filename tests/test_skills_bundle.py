"""Skill folders, front matter, generated tables and manifest.json are consistent."""
import json
import re
import subprocess
import sys

import pytest
import yaml
from pathlib import Path

from skill_docs import ROOT, SKILLS

SKILL_DIRS = sorted(p.parent for p in SKILLS.rglob("SKILL.md"))


def front_matter(path):
    m = re.match(r"^---\n(.*?)\n---\n", path.read_text(encoding="utf-8"), re.S)
    assert m, f"{path}: no front matter"
    return yaml.safe_load(m.group(1))


def test_required_skills_exist():
    assert {d.name for d in SKILL_DIRS} >= {"trl-fine-tuning", "simpo", "preference-diagnostics"}


@pytest.mark.parametrize("skill", SKILL_DIRS, ids=lambda p: p.name)
def test_front_matter(skill):
    meta = front_matter(skill / "SKILL.md")
    assert meta["name"] == skill.name
    assert re.fullmatch(r"[a-z0-9-]{1,64}", meta["name"])
    # Agent Skills spec: only these top-level fields; version and tags live under metadata (hermes' layout)
    assert set(meta) <= {"name", "description", "license", "compatibility", "metadata", "allowed-tools"}
    assert 0 < len(meta["description"]) <= 1024 and 0 < len(meta["compatibility"]) <= 500
    first = re.split(r"(?<=\.)\s", meta["description"], maxsplit=1)[0]
    assert first.startswith("Use when") and len(first) <= 60, "hermes shows ~60 characters: say when, first"
    assert re.fullmatch(r"\d+\.\d+\.\d+", str(meta["metadata"]["version"]))
    hermes = meta["metadata"]["hermes"]
    assert isinstance(hermes["tags"], list) and hermes["tags"] and isinstance(hermes["related_skills"], list)
    assert "## Prerequisites" in (skill / "SKILL.md").read_text(encoding="utf-8")
    assert (skill / "references").is_dir() and any((skill / "references").iterdir())


@pytest.mark.parametrize("skill", SKILL_DIRS, ids=lambda p: p.name)
def test_references_mentioned_in_skill_exist(skill):
    text = (skill / "SKILL.md").read_text(encoding="utf-8")
    for ref in re.findall(r"`(references/[\w./-]+)`", text):
        assert (skill / ref).is_file(), f"{skill.name}/SKILL.md points at missing {ref}"


def test_generated_tables_are_current():
    from prefpilot import skills
    assert skills.render(check=True) == [], "run `prefpilot skills render`"


def test_rendered_table_rows_come_from_yaml():
    from prefpilot import skills
    t = skills.load_table("simpo")
    md = (SKILLS / "mlops/simpo/references/hyperparameters.md").read_text()
    for row in t["rows"]:
        line = next(l for l in md.splitlines() if l.startswith(f"| {row['model']} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[1]) == row["beta"] and float(cells[2]) == row["gamma_beta_ratio"]
        assert float(cells[3]) == pytest.approx(row["beta"] * row["gamma_beta_ratio"])
        assert float(cells[4]) == row["learning_rate"]


def test_hyperparameter_rows_have_sources_and_sane_values():
    from prefpilot import skills
    for method in ("dpo", "simpo"):
        t = skills.load_table(method)
        for row in t["rows"]:
            assert row["source"] and row["beta"] > 0 and 0 < row["learning_rate"] < 1e-4, row
        for name, r in t["ranges"].items():
            assert r["sane"][0] <= r["typical"][0] <= r["typical"][1] <= r["sane"][1], name
    for lt, v in skills.load_table("dpo")["loss_types"].items():
        assert v["source"] and v["beta"] > 0, lt


def test_manifest_is_current(tmp_path):
    """Regenerating the manifest changes nothing (else: `python sync.py --write-manifest`)."""
    import shutil
    shutil.copytree(ROOT / "skills", tmp_path / "skills")
    shutil.copy(ROOT / "sync.py", tmp_path)
    subprocess.run([sys.executable, str(tmp_path / "sync.py"), "--write-manifest"], check=True, capture_output=True)
    assert json.loads((tmp_path / "manifest.json").read_text()) == json.loads((ROOT / "manifest.json").read_text())


def test_manifest_shape():
    m = json.loads((ROOT / "manifest.json").read_text())
    assert m["schema_version"] == 1 and m["bundle"]["name"] == "prefpilot"
    for s in m["skills"]:
        assert set(s) == {"name", "path", "version", "description", "sha256", "files"}
        assert (SKILLS / s["path"] / "SKILL.md").is_file()
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in s["files"].values())


@pytest.mark.parametrize("skill", SKILL_DIRS, ids=lambda p: p.name)
def test_agent_skills_reference_validator(skill):
    """The Agent Skills spec's own validator (PyPI skills-ref, a dev extra) accepts every skill."""
    validator = pytest.importorskip("skills_ref.validator", reason="skills-ref (the Agent Skills validator, dev "
                                    "extra 'clients') is not installed")
    assert validator.validate(skill) == []


def test_long_references_have_a_table_of_contents():
    for ref in ROOT.glob("skills/**/references/*.md"):
        text = ref.read_text(encoding="utf-8")
        if text.count("\n") > 300:
            head = "\n".join(text.splitlines()[:40])
            assert "## Contents" in head, f"{ref} has over 300 lines and no table of contents at the top"


def test_claude_code_plugin_packaging():
    """`/plugin marketplace add <this repo>` then `/plugin install prefpilot@prefpilot`: the manifests follow
    Claude Code's documented plugin.json / marketplace.json fields, every skill path holds a SKILL.md and the
    MCP server is the same `prefpilot mcp` the README configures."""
    market = json.loads((ROOT / ".claude-plugin/marketplace.json").read_text())
    assert re.fullmatch(r"[a-z0-9-]+", market["name"]) and market["owner"]["name"]
    (entry,) = market["plugins"]
    plugin_root = (ROOT / entry["source"]).resolve()
    plugin = json.loads((plugin_root / ".claude-plugin/plugin.json").read_text())
    assert plugin["name"] == entry["name"] and re.fullmatch(r"[a-z0-9-]+", plugin["name"])
    assert plugin["version"] == entry["version"]
    assert sorted(Path(p).name for p in plugin["skills"]) == sorted(p.name for p in SKILL_DIRS)
    for p in plugin["skills"]:
        assert p.startswith("./") and (plugin_root / p / "SKILL.md").is_file()
    (server,) = plugin["mcpServers"].values()
    assert server["command"] == "prefpilot" and server["args"][0] == "mcp"
