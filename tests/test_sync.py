"""sync.py: every rule of the installer, against real files and real processes."""
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("sync", ROOT / "sync.py")
sync = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sync)


def skill_md(name, body="body", version="0.1.0"):
    return f"---\nname: {name}\ndescription: Use it for {name}.\nversion: {version}\ntags: [t]\n---\n\n# {name}\n{body}\n"


class Bundle:
    """A throw-away bundle directory (skills/ + manifest.json + sync.py) we can change like upstream does."""

    def __init__(self, path: Path):
        self.path = path
        (path / "skills").mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "sync.py", path / "sync.py")

    def put(self, name, body="body", category="cat", extra=None):
        d = self.path / "skills" / category / name
        (d / "references").mkdir(parents=True, exist_ok=True)
        (d / "SKILL.md").write_text(skill_md(name, body))
        (d / "references" / "notes.md").write_text(f"notes of {name}: {body}\n")
        for rel, text in (extra or {}).items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_text(text)
        return self

    def drop(self, name, category="cat"):
        shutil.rmtree(self.path / "skills" / category / name)
        return self

    def manifest(self):
        m = sync.build_manifest(self.path / "skills")
        (self.path / "manifest.json").write_text(json.dumps(m, indent=2))
        return self

    def sync(self, target, *extra):
        """Run the real script in a process; returns (exit code, parsed JSON)."""
        p = subprocess.run([sys.executable, str(self.path / "sync.py"), "--target", str(target), "--json", *extra],
                           capture_output=True, text=True, timeout=120)
        return p.returncode, json.loads(p.stdout) if p.stdout.strip() else {}


@pytest.fixture
def bundle(tmp_path):
    return Bundle(tmp_path / "bundle").put("alpha").put("beta").manifest()


@pytest.fixture
def target(tmp_path):
    return tmp_path / "target"


def snapshot(folder: Path):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".prefpilot" not in p.relative_to(folder).parts}


def test_fresh_install_tree_layout(bundle, target):
    rc, out = bundle.sync(target)
    assert rc == 0 and out["copied"] == ["alpha", "beta"]
    assert set(out) >= set(sync.RESULT_KEYS)
    assert (target / "cat/alpha/SKILL.md").read_text() == skill_md("alpha")
    rc, out = bundle.sync(target)
    assert out["unchanged"] == ["alpha", "beta"] and not out["copied"]


def test_claude_layout_is_flat(bundle, tmp_path):
    home = tmp_path / "home"
    env = dict(os.environ, HOME=str(home))
    p = subprocess.run([sys.executable, str(bundle.path / "sync.py"), "--agent", "claude", "--json"],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert (home / ".claude/skills/alpha/SKILL.md").is_file() and not (home / ".claude/skills/cat").exists()


def test_default_target_is_hermes_and_env_overrides(bundle, tmp_path):
    env = dict(os.environ, HERMES_HOME=str(tmp_path / "hh"))
    env.pop("PREFPILOT_SKILLS_DIR", None)
    subprocess.run([sys.executable, str(bundle.path / "sync.py")], check=True, env=env, capture_output=True)
    assert (tmp_path / "hh/skills/cat/alpha/SKILL.md").is_file()
    env["PREFPILOT_SKILLS_DIR"] = str(tmp_path / "pp")
    subprocess.run([sys.executable, str(bundle.path / "sync.py")], check=True, env=env, capture_output=True)
    assert (tmp_path / "pp/cat/alpha/SKILL.md").is_file()


def test_pristine_copy_is_updated(bundle, target):
    bundle.sync(target)
    bundle.put("alpha", "v2").manifest()
    rc, out = bundle.sync(target)
    assert rc == 0 and out["updated"] == ["alpha"] and out["unchanged"] == ["beta"]
    assert "v2" in (target / "cat/alpha/SKILL.md").read_text()


def test_user_edit_is_kept(bundle, target):
    bundle.sync(target)
    (target / "cat/alpha/SKILL.md").write_text("mine")
    bundle.put("alpha", "v2").manifest()
    rc, out = bundle.sync(target)
    assert out["user_modified"] == ["alpha"] and (target / "cat/alpha/SKILL.md").read_text() == "mine"
    # an added file counts as an edit too
    (target / "cat/beta/extra.md").write_text("my note")
    bundle.put("beta", "v2").manifest()
    rc, out = bundle.sync(target)
    assert "beta" in out["user_modified"] and "v2" not in (target / "cat/beta/SKILL.md").read_text()


def test_user_delete_is_respected_and_reset_restores(bundle, target):
    bundle.sync(target)
    shutil.rmtree(target / "cat/alpha")
    bundle.put("alpha", "v2").manifest()
    rc, out = bundle.sync(target)
    assert out["user_deleted"] == ["alpha"] and not (target / "cat/alpha").exists()
    rc, out = bundle.sync(target, "--reset", "alpha")
    assert rc == 0 and "v2" in (target / "cat/alpha/SKILL.md").read_text()
    rc, out = bundle.sync(target)
    assert out["unchanged"] == ["alpha", "beta"]


def test_reset_backs_up_the_user_copy(bundle, target):
    bundle.sync(target)
    (target / "cat/alpha/SKILL.md").write_text("mine")
    rc, out = bundle.sync(target, "--reset", "alpha")
    assert rc == 0 and (target / "cat/alpha/SKILL.md").read_text() == skill_md("alpha")
    (backup,) = out["backups"]
    assert Path(backup).is_relative_to(target / ".prefpilot")
    # kept whole, but not as a loadable skill: agents scan hidden folders too
    assert (Path(backup) / "SKILL.md.bak").read_text() == "mine" and not (Path(backup) / "SKILL.md").exists()


def test_reset_unknown_name_is_usage_error(bundle, target):
    rc, out = bundle.sync(target, "--reset", "nope")
    assert rc == 2 and "nope" in out["error"]


def test_removed_from_bundle(bundle, target):
    bundle.put("gamma").manifest()
    bundle.sync(target)
    (target / "cat/beta/SKILL.md").write_text("mine")
    bundle.drop("alpha").drop("beta").manifest()
    rc, out = bundle.sync(target)
    assert out["removed"] == ["alpha"] and out["kept_orphans"] == ["beta"]
    assert not (target / "cat/alpha").exists() and (target / "cat/beta/SKILL.md").read_text() == "mine"
    rc, out = bundle.sync(target)  # beta is untracked now: not mentioned again
    assert out["unchanged"] == ["gamma"] and not out["kept_orphans"]


def test_collisions(bundle, target):
    (target / "cat/alpha").mkdir(parents=True)
    (target / "cat/alpha/SKILL.md").write_text("someone else's alpha")
    shutil.copytree(bundle.path / "skills/cat/beta", target / "cat/beta")  # byte-identical: adopted
    rc, out = bundle.sync(target)
    assert out["collisions"] == ["alpha"] and out["unchanged"] == ["beta"]
    assert (target / "cat/alpha/SKILL.md").read_text() == "someone else's alpha"
    bundle.put("beta", "v2").put("alpha", "v2").manifest()
    rc, out = bundle.sync(target)
    assert out["updated"] == ["beta"] and out["collisions"] == ["alpha"]


def test_symlinked_skill_left_alone(bundle, target, tmp_path):
    elsewhere = tmp_path / "my-alpha"
    shutil.copytree(bundle.path / "skills/cat/alpha", elsewhere)
    (target / "cat").mkdir(parents=True)
    (target / "cat/alpha").symlink_to(elsewhere)
    bundle.put("alpha", "v2").manifest()
    rc, out = bundle.sync(target)
    assert "alpha" in out["collisions"] and (target / "cat/alpha").is_symlink()
    assert "v2" not in (elsewhere / "SKILL.md").read_text()


def test_parent_symlink_escaping_target_is_refused(bundle, target, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    target.mkdir()
    (target / "cat").symlink_to(outside)
    rc, out = bundle.sync(target)
    assert rc == 1 and out["errors"] == ["alpha", "beta"] and not any(outside.iterdir())


def test_other_user_files_untouched(bundle, target):
    (target / "mine/skill").mkdir(parents=True)
    (target / "mine/skill/SKILL.md").write_text("x")
    (target / "cat").mkdir()
    (target / "cat/README.txt").write_text("y")
    bundle.sync(target)
    bundle.drop("alpha").manifest()
    bundle.sync(target)
    assert (target / "mine/skill/SKILL.md").read_text() == "x" and (target / "cat/README.txt").read_text() == "y"


def test_dry_run_writes_nothing(bundle, target):
    rc, out = bundle.sync(target, "--dry-run")
    assert rc == 0 and out["copied"] == ["alpha", "beta"] and not target.exists()
    bundle.sync(target)
    (target / "cat/alpha/SKILL.md").write_text("mine")
    bundle.put("beta", "v2").manifest()
    before = {p: p.stat().st_mtime_ns for p in target.rglob("*")}
    rc, out = bundle.sync(target, "--dry-run")
    assert out["updated"] == ["beta"] and out["user_modified"] == ["alpha"]
    assert {p: p.stat().st_mtime_ns for p in target.rglob("*")} == before


def test_stale_manifest_is_exit_2_and_writes_nothing(bundle, target):
    (bundle.path / "skills/cat/alpha/SKILL.md").write_text(skill_md("alpha", "edited without manifest"))
    rc, out = bundle.sync(target)
    assert rc == 2 and "stale" in out["error"] and not target.exists()


def test_read_only_installed_copy_still_updates(bundle, target):
    bundle.sync(target)
    for p in sorted((target / "cat/alpha").rglob("*"), reverse=True) + [target / "cat/alpha"]:
        p.chmod(0o444 if p.is_file() else 0o555)
    bundle.put("alpha", "v2").manifest()
    rc, out = bundle.sync(target)
    assert rc == 0 and out["updated"] == ["alpha"] and "v2" in (target / "cat/alpha/SKILL.md").read_text()


def test_read_only_bundle_installs_writable_copies(bundle, target):
    for p in (bundle.path / "skills").rglob("*"):
        if p.is_file():
            p.chmod(0o444)
    bundle.sync(target)
    assert os.access(target / "cat/alpha/SKILL.md", os.W_OK) or os.geteuid() == 0
    assert (target / "cat/alpha/SKILL.md").stat().st_mode & 0o200


def test_corrupt_state_keeps_everything(bundle, target):
    bundle.sync(target)
    (target / "cat/alpha/SKILL.md").write_text("mine")
    (target / ".prefpilot/state.json").write_text("{not json")
    bundle.put("alpha", "v2").put("beta", "v2").manifest()
    rc, out = bundle.sync(target)
    assert rc == 1 and ".prefpilot" in out["errors"]
    assert (target / "cat/alpha/SKILL.md").read_text() == "mine"
    assert set(out["collisions"]) == {"alpha", "beta"}  # no origin known: nothing is overwritten
    assert list((target / ".prefpilot").glob("state.corrupt-*.json"))


def test_tampered_state_cannot_reach_outside(bundle, target, tmp_path):
    bundle.sync(target)
    victim = tmp_path / "victim"
    shutil.copytree(bundle.path / "skills/cat/alpha", victim)
    state = json.loads((target / ".prefpilot/state.json").read_text())
    state["skills"]["zeta"] = {"origin": sync.folder_sha(victim), "path": "../victim", "version": "1"}
    state["skills"]["eta"] = {"origin": sync.folder_sha(victim), "path": str(victim), "version": "1"}
    (target / ".prefpilot/state.json").write_text(json.dumps(state))
    rc, out = bundle.sync(target)
    assert rc == 1 and set(out["errors"]) == {"zeta", "eta"} and (victim / "SKILL.md").is_file()


def test_kill_during_large_update_then_resync_ends_whole(tmp_path):
    big = {f"references/part{i:04d}.md": ("x" * 2000 + str(i)) for i in range(1500)}
    b = Bundle(tmp_path / "bundle").put("huge", "v1", extra=big).put("small").manifest()
    target = tmp_path / "target"
    b.sync(target)
    (target / "cat/small/SKILL.md").write_text("user edit")
    for round_, delay in enumerate([0.05, 0.12, 0.2, 0.3, 0.45, 0.6]):
        b.put("huge", f"v{round_ + 2}", extra={k: v + str(round_) for k, v in big.items()}).manifest()
        p = subprocess.Popen([sys.executable, str(b.path / "sync.py"), "--target", str(target)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        rc, out = b.sync(target)
        assert rc == 0, out
        assert snapshot(target / "cat/huge") == snapshot(b.path / "skills/cat/huge"), f"round {round_}"
        assert (target / "cat/small/SKILL.md").read_text() == "user edit"
        assert out["user_modified"] == ["small"]
        leftovers = [p for sub in ("staging", "trash") for p in (target / ".prefpilot" / sub).glob("*")]
        assert leftovers == [] and not list((target / ".prefpilot").glob("state.tmp-*"))


def test_four_concurrent_syncs(bundle, target):
    for i in range(6):
        bundle.put(f"s{i}", extra={f"references/r{j}.md": "y" * 5000 for j in range(50)})
    bundle.manifest()
    procs = [subprocess.Popen([sys.executable, str(bundle.path / "sync.py"), "--target", str(target), "--json"],
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    copied = sorted(n for o in outs for n in o["copied"])
    assert copied == sorted(["alpha", "beta"] + [f"s{i}" for i in range(6)])  # each copied exactly once
    assert snapshot(target) == snapshot(bundle.path / "skills")


# ----------------------------------------------------------------------------- property-based
OPS = st.lists(st.tuples(st.sampled_from(["upstream", "edit", "delete", "sync", "drop", "readd", "move",
                                          "uninstall"]), st.integers(0, 2)), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_no_user_edit_is_ever_lost(tmp_path_factory, ops):
    tmp = tmp_path_factory.mktemp("prop")
    names = ["a0", "a1", "a2"]
    b = Bundle(tmp / "bundle")
    for n in names:
        b.put(n)
    b.manifest()
    target = tmp / "t"
    run = lambda *extra: sync.main(["--bundle", str(b.path), "--target", str(target), "--json", *extra])  # noqa
    assert run() == 0
    edits: dict[str, tuple] = {}   # skill -> (folder the user edited, text they wrote into its SKILL.md)
    category = {n: "cat" for n in names}
    in_bundle = set(names)
    version = 0
    for op, i in ops:
        n = names[i]
        here = [target / c / n for c in ("cat", "cat2") if (target / c / n).is_dir()]
        if op == "upstream" and n in in_bundle:
            version += 1
            b.put(n, f"v{version}", category[n]).manifest()
        elif op == "drop" and n in in_bundle:
            b.drop(n, category[n]).manifest()
            in_bundle.discard(n)
        elif op == "readd" and n not in in_bundle:
            b.put(n, f"back{version}", category[n]).manifest()
            in_bundle.add(n)
        elif op == "move" and n in in_bundle:  # upstream moves the skill to another category
            b.drop(n, category[n])
            category[n] = "cat2" if category[n] == "cat" else "cat"
            b.put(n, f"moved{version}", category[n]).manifest()
        elif op == "edit" and here:
            edits[n] = (here[0], f"user text {len(edits)} {version}")
            (here[0] / "SKILL.md").write_text(edits[n][1])
        elif op == "delete" and here:
            shutil.rmtree(here[0])
            if edits.get(n, (None,))[0] == here[0]:
                edits.pop(n)  # the user threw their own edit away; that is theirs to do
        elif op == "sync":
            assert run() in (0, 1)
        elif op == "uninstall":
            assert run("--uninstall") in (0, 1)
        for m, (folder, text) in edits.items():
            assert (folder / "SKILL.md").read_text() == text, (ops, m)


def agent_scan(target):
    """What hermes does: every SKILL.md below the skills folder, hidden folders included, by frontmatter name."""
    names = []
    for p in target.rglob("SKILL.md"):
        m = re.search(r"^name:\s*(\S+)", p.read_text(), re.M)
        names.append(m.group(1) if m else p.parent.name)
    return sorted(names)


def test_an_agent_scan_finds_each_skill_once_through_edit_reset_and_uninstall(bundle, target):
    bundle.sync(target)
    assert agent_scan(target) == ["alpha", "beta"]
    (target / "cat/alpha/SKILL.md").write_text(skill_md("alpha", "my edit"))
    bundle.sync(target, "--reset", "alpha")  # the edited copy goes to .prefpilot/backups/
    assert agent_scan(target) == ["alpha", "beta"]
    rc, out = bundle.sync(target, "--uninstall")
    assert rc == 0 and set(out["removed"]) == {"alpha", "beta"} and agent_scan(target) == []


def test_a_skill_of_the_same_name_elsewhere_is_a_collision_until_replace(bundle, target):
    theirs = target / "mlops" / "training" / "alpha"  # an agent's own skill with our name, at another path
    theirs.mkdir(parents=True)
    (theirs / "SKILL.md").write_text(skill_md("alpha", "hermes' own"))
    rc, out = bundle.sync(target)
    assert "alpha" in out["collisions"] and str(theirs) in out["messages"]["alpha"] and "--replace" in \
        out["messages"]["alpha"]
    assert not (target / "cat/alpha").exists() and agent_scan(target) == ["alpha", "beta"]
    rc, out = bundle.sync(target, "--replace", "alpha")
    assert rc == 0 and "alpha" in out["copied"] and not theirs.exists()
    (backup,) = out["backups"]
    assert "hermes' own" in (Path(backup) / "SKILL.md.bak").read_text()
    assert agent_scan(target) == ["alpha", "beta"]


@pytest.mark.parametrize("where", ["cat/alpha", "mlops/other/alpha"])
def test_an_agents_skill_in_a_folder_of_our_name_is_a_collision_until_replace(bundle, target, where):
    """README: hermes' optional `simpo` skill (folder simpo, front-matter name simpo-training), wherever it is."""
    theirs = target / where
    theirs.mkdir(parents=True)
    (theirs / "SKILL.md").write_text(skill_md("alpha-training", "hermes' optional skill"))
    rc, out = bundle.sync(target)
    assert out["collisions"] == ["alpha"] and "beta" in out["copied"]
    assert (theirs / "SKILL.md").read_text() == skill_md("alpha-training", "hermes' optional skill")
    assert not (target / "cat/alpha/references").exists()  # ours is not installed beside or over theirs
    rc, out = bundle.sync(target, "--replace", "alpha")
    assert rc == 0 and "alpha" in out["copied"]
    (backup,) = out["backups"]
    assert "hermes' optional skill" in (Path(backup) / "SKILL.md.bak").read_text()
    assert (target / "cat/alpha/SKILL.md").read_text() == skill_md("alpha") and not (
        where != "cat/alpha" and theirs.exists())


def test_a_moved_skill_follows_when_pristine_and_stays_when_edited(tmp_path):
    b = Bundle(tmp_path / "b").put("alpha").put("beta").manifest()
    target = tmp_path / "t"
    b.sync(target)
    (target / "cat/beta/SKILL.md").write_text("edited")
    b.drop("alpha").put("alpha", category="other").drop("beta").put("beta", category="other").manifest()
    rc, out = b.sync(target)
    assert (target / "other/alpha/SKILL.md").is_file() and not (target / "cat/alpha").exists()
    assert "moved" in out["messages"]["alpha"] and "alpha" not in out["user_deleted"]
    assert (target / "cat/beta/SKILL.md").read_text() == "edited" and not (target / "other/beta").exists()
    assert "beta" in out["user_modified"] and "your edited copy stays" in out["messages"]["beta"]


def test_a_copy_equal_to_the_new_version_is_adopted(bundle, target):
    bundle.sync(target)
    bundle.put("alpha", "v2").manifest()
    for rel in ("SKILL.md", "references/notes.md"):  # the user brought their copy up to date by hand
        shutil.copy(bundle.path / "skills/cat/alpha" / rel, target / "cat/alpha" / rel)
    rc, out = bundle.sync(target)
    assert "alpha" in out["unchanged"] and "adopted" in out["messages"]["alpha"]
    bundle.put("alpha", "v3").manifest()
    assert "alpha" in bundle.sync(target)[1]["updated"]  # tracked again: later updates apply


def test_list_diff_only_and_uninstall_keep_edits(bundle, target):
    bundle.sync(target, "--only", "alpha")
    assert (target / "cat/alpha").is_dir() and not (target / "cat/beta").exists()
    bundle.sync(target)
    (target / "cat/alpha/references/notes.md").write_text("my notes\n")
    bundle.put("beta", "v2").manifest()
    p = subprocess.run([sys.executable, str(bundle.path / "sync.py"), "--target", str(target), "--list", "--json"],
                       capture_output=True, text=True, timeout=60)
    rows = {r["name"]: r["status"] for r in json.loads(p.stdout)}
    assert rows == {"alpha": "edited", "beta": "pristine, update available"}
    p = subprocess.run([sys.executable, str(bundle.path / "sync.py"), "--target", str(target), "--diff", "alpha"],
                       capture_output=True, text=True, timeout=60)
    assert "references/notes.md: you changed it" in p.stdout and "+my notes" in p.stdout
    rc, out = bundle.sync(target, "--uninstall")
    assert out["removed"] == ["beta"] and out["user_modified"] == ["alpha"]
    assert (target / "cat/alpha/references/notes.md").read_text() == "my notes\n"


def test_exec_bits_kept_and_presets(tmp_path, monkeypatch):
    b = Bundle(tmp_path / "b").put("alpha", extra={"scripts/run.sh": "#!/bin/sh\necho hi\n"})
    (b.path / "skills/cat/alpha/scripts/run.sh").chmod(0o755)
    b.manifest()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for agent, where in (("agents", "home/.agents/skills"), ("codex", "home/.agents/skills"),
                         ("cursor", "home/.cursor/skills")):
        assert sync.main(["--bundle", str(b.path), "--agent", agent, "--json"]) == 0
        assert os.access(tmp_path / where / "alpha/scripts/run.sh", os.X_OK)
    assert sync.main(["--bundle", str(b.path), "--agent", "claude", "--project", str(tmp_path / "proj")]) == 0
    assert (tmp_path / "proj/.claude/skills/alpha/SKILL.md").is_file()


# ----------------------------------------------------------------------------- hardening (issue 13)
@pytest.mark.parametrize("token", ["/tmp/outside-victim", "../../outside-victim", "..", 7, "abc"])
def test_a_forged_journal_token_touches_nothing(bundle, target, tmp_path, token):
    bundle.sync(target)
    victim = tmp_path / "outside-victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "keep.txt").write_text("precious")
    if token == "/tmp/outside-victim":
        token = str(victim)
    state = json.loads((target / ".prefpilot/state.json").read_text())
    state["pending"]["alpha"] = {"kind": "install", "path": "cat/alpha", "new": "0" * 64, "token": token}
    (target / ".prefpilot/state.json").write_text(json.dumps(state))
    rc, out = bundle.sync(target)
    assert rc == 1 and ".prefpilot" in out["errors"] and "pending entry" in out["messages"][".prefpilot"]
    assert (victim / "sub" / "keep.txt").read_text() == "precious"
    assert (target / "cat/alpha/SKILL.md").is_file() and (target / ".prefpilot/state.json").is_file()
    assert bundle.sync(target)[0] == 0  # and the next run is clean: the bad entry is gone


@pytest.mark.parametrize("link", [".prefpilot", ".prefpilot/staging", ".prefpilot/trash", ".prefpilot/backups"])
def test_our_folders_as_symlinks_are_refused_untouched(bundle, target, tmp_path, link):
    bundle.sync(target)
    outside = tmp_path / "outside"
    (outside / "data").mkdir(parents=True)
    (outside / "data" / "f.txt").write_text("x")
    p = target / link
    shutil.rmtree(p, ignore_errors=True)
    p.symlink_to(outside, target_is_directory=True)
    p2 = subprocess.run([sys.executable, str(bundle.path / "sync.py"), "--target", str(target)],
                        capture_output=True, text=True, timeout=60)
    assert p2.returncode == 2 and "symbolic link" in p2.stderr and "Traceback" not in p2.stderr
    assert (outside / "data" / "f.txt").read_text() == "x" and sorted(os.listdir(outside)) == ["data"]


def test_an_edit_saved_while_the_new_version_is_copied_is_kept(bundle, target, monkeypatch):
    bundle.sync(target)
    bundle.put("alpha", "v2").manifest()
    real_copy = sync._copy_tree

    def copy_then_user_saves(src, dst):
        real_copy(src, dst)
        (target / "cat/alpha/SKILL.md").write_text("my edit, saved mid-sync")
    monkeypatch.setattr(sync, "_copy_tree", copy_then_user_saves)
    manifest = sync.load_bundle(bundle.path)
    out = sync.Syncer(bundle.path, target, "tree", False).run(manifest)
    assert "alpha" in out["user_modified"] and "alpha" not in out["updated"]
    assert (target / "cat/alpha/SKILL.md").read_text() == "my edit, saved mid-sync"
    assert not list((target / ".prefpilot/staging").iterdir()) and not list((target / ".prefpilot/trash").iterdir())


def test_files_sync_never_installed_survive_an_update(bundle, target):
    bundle.sync(target)
    (target / "cat/alpha/__pycache__").mkdir()
    (target / "cat/alpha/__pycache__/notes.md").write_text("mine")
    (target / "cat/alpha/.DS_Store").write_bytes(b"\0\1")
    (target / "cat/alpha/empty-dir").mkdir()
    bundle.put("alpha", "v2").manifest()
    rc, out = bundle.sync(target)
    assert rc == 0 and out["updated"] == ["alpha"] and "v2" in (target / "cat/alpha/SKILL.md").read_text()
    assert (target / "cat/alpha/__pycache__/notes.md").read_text() == "mine"
    assert (target / "cat/alpha/.DS_Store").read_bytes() == b"\0\1" and (target / "cat/alpha/empty-dir").is_dir()


def test_a_waiting_sync_says_so_and_gives_up(bundle, target):
    import fcntl
    bundle.sync(target)
    with open(target / ".prefpilot/lock", "a+") as fh:  # a stopped sync still holding the lock
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, str(bundle.path / "sync.py"), "--target", str(target),
                            "--lock-timeout", "1"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "waiting for another sync" in p.stderr and "another sync has held" in p.stderr
    assert time.monotonic() - t0 < 20


def test_unusable_targets_and_manifests_are_one_line_exit_2(bundle, tmp_path):
    def run(*args, bundle_dir=bundle.path):
        p = subprocess.run([sys.executable, str(bundle_dir / "sync.py"), *args], capture_output=True, text=True,
                           timeout=60)
        assert "Traceback" not in p.stderr, p.stderr
        return p.returncode, p.stderr
    assert run("--target", "")[0] == 2
    afile = tmp_path / "a-file"
    afile.write_text("x")
    rc, err = run("--target", str(afile))
    assert rc == 2 and "is a file" in err
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if not os.access(ro, os.W_OK):  # root may write anyway
            assert run("--target", str(ro / "skills"))[0] == 2
    finally:
        ro.chmod(0o700)
    for text in ('{"skills": 5}', '[1, 2]', "[" * 100000, json.dumps(
            {"skills": [{"name": "alpha", "path": "cat/alpha", "sha256": "x"},
                        {"name": "alpha", "path": "cat/beta", "sha256": "y"}]})):
        (bundle.path / "manifest.json").write_text(text)
        rc, err = run("--target", str(tmp_path / "t"))
        assert rc == 2 and err.count("\n") == 1, err


def test_output_into_a_closed_pipe_is_not_a_traceback(bundle, target):
    p = subprocess.run(f"{sys.executable} {bundle.path / 'sync.py'} --target {target} --json | head -c 5",
                       shell=True, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr


def test_state_is_saved_once_for_many_stale_entries(bundle, target, monkeypatch):
    bundle.sync(target)
    state = json.loads((target / ".prefpilot/state.json").read_text())
    for i in range(2000):  # skills we once installed, since deleted by the user and dropped from the bundle
        state["skills"][f"gone-{i}"] = {"origin": "0" * 64, "path": f"cat/gone-{i}", "version": "1"}
    (target / ".prefpilot/state.json").write_text(json.dumps(state))
    saves = []
    real = sync.Syncer.save_state
    monkeypatch.setattr(sync.Syncer, "save_state", lambda self, st: (saves.append(1), real(self, st)))
    out = sync.Syncer(bundle.path, target, "tree", False).run(sync.load_bundle(bundle.path))
    assert not out["errors"] and len(saves) <= 3
    assert not any(k.startswith("gone-") for k in json.loads((target / ".prefpilot/state.json").read_text())["skills"])
