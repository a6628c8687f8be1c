"""Skill folders, front matter, generated tables and manifest.json are consistent."""
import json
import re
import subprocess
import sys

import pytest
import yaml

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
    assert 0 < len(meta["description"]) <= 1024 and "use it" in meta["description"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", str(meta["version"]))
    assert isinstance(meta["tags"], list) and meta["tags"]
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
