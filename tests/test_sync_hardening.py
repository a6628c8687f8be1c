"""sync.py against the red team's probes (issue 22): links, FIFOs, forged states, races and odd flags.

Every probe runs the real script in a process with a timeout, so a hang fails instead of hanging the suite."""
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from test_sync import Bundle, bundle, skill_md, sync, target  # noqa: F401  (fixtures)

TOKEN = "ab" * 16  # shaped like the journal tokens sync writes


def run(bundle_dir, *args, timeout=30, env=None):
    p = subprocess.run([sys.executable, str(bundle_dir / "sync.py"), *args], capture_output=True, text=True,
                       timeout=timeout, env=env)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def sync_json(b, target, *args, timeout=30):
    p = run(b.path, "--target", str(target), "--json", *args, timeout=timeout)
    return p.returncode, json.loads(p.stdout) if p.stdout.strip() else {}


def outside_folder(tmp_path):
    """A folder of the user's outside the target, with skills in it; returns it and a snapshot function
    (names, bytes and modes) to prove that nothing in it changed."""
    out = tmp_path / "outside"
    (out / "sub").mkdir(parents=True)
    (out / "SKILL.md").write_text(skill_md("alpha", "the user's own, elsewhere"))
    (out / "sub" / "SKILL.md").write_text(skill_md("inner"))
    (out / "notes.md").write_text("precious")
    for p in (out / "SKILL.md", out / "sub" / "SKILL.md", out / "notes.md"):
        p.chmod(0o444)

    def snap():
        return {p.relative_to(out).as_posix(): (p.read_bytes() if p.is_file() else None, stat.S_IMODE(p.stat().st_mode))
                for p in sorted(out.rglob("*"))}
    return out, snap


# ----------------------------------------------------------------------------- item 2: symlinked skill folders
def test_reset_of_a_symlinked_skill_folder_leaves_the_link_and_its_target_alone(bundle, target, tmp_path):
    bundle.sync(target)
    out, snap = outside_folder(tmp_path)
    before = snap()
    import shutil
    shutil.rmtree(target / "cat/alpha")
    (target / "cat/alpha").symlink_to(out, target_is_directory=True)
    rc, res = sync_json(bundle, target, "--reset", "alpha")
    assert snap() == before  # no SKILL.md renamed to .bak out there, no chmod
    assert (target / "cat/alpha").is_symlink() and "alpha" in res["errors"]
    assert "symbolic link" in res["messages"]["alpha"] and not res["backups"]
    rc, res = sync_json(bundle, target)
    assert snap() == before and "alpha" in res["user_modified"] and rc == 0


def test_replace_on_an_untracked_symlinked_folder_leaves_it_alone(bundle, target, tmp_path):
    out, snap = outside_folder(tmp_path)
    before = snap()
    (target / "cat").mkdir(parents=True)
    (target / "cat/alpha").symlink_to(out, target_is_directory=True)
    rc, res = sync_json(bundle, target, "--replace", "alpha")
    assert snap() == before and (target / "cat/alpha").is_symlink()
    assert "alpha" in res["errors"] and "symbolic link" in res["messages"]["alpha"]
    assert not list((target / ".prefpilot").rglob("*.bak"))


@pytest.mark.parametrize("dest_present", [False, True])
def test_a_forged_journal_entry_with_a_linked_trash_folder_follows_nothing(bundle, target, tmp_path, dest_present):
    bundle.sync(target)
    out, snap = outside_folder(tmp_path)
    before = snap()
    if not dest_present:
        import shutil
        shutil.rmtree(target / "cat/alpha")
    state = json.loads((target / ".prefpilot/state.json").read_text())
    state["pending"]["alpha"] = {"kind": "install", "path": "cat/alpha", "new": "0" * 64, "token": TOKEN}
    (target / ".prefpilot/state.json").write_text(json.dumps(state))
    (target / ".prefpilot/trash").mkdir(exist_ok=True)
    (target / ".prefpilot/trash" / TOKEN).symlink_to(out, target_is_directory=True)
    for args in ((), ("--reset", "alpha"), ()):
        rc, res = sync_json(bundle, target, *args)
        assert rc in (0, 1) and res, res
        assert snap() == before, args
        assert not (target / "cat/alpha").is_symlink()
    assert (target / "cat/alpha/SKILL.md").read_text() == skill_md("alpha")
    assert (target / ".prefpilot/trash" / TOKEN).is_symlink()  # not ours: left where it is, and reported
    assert "left alone" in res["messages"][".prefpilot"]


def test_a_symlinked_backup_is_never_defused_through(bundle, target, tmp_path):
    bundle.sync(target)
    out, snap = outside_folder(tmp_path)
    before = snap()
    (target / ".prefpilot/backups").mkdir(exist_ok=True)
    (target / ".prefpilot/backups/alpha-old").symlink_to(out, target_is_directory=True)
    rc, res = sync_json(bundle, target)
    assert rc == 0 and snap() == before


# ----------------------------------------------------------------------------- item 6: --replace and categories
@pytest.mark.parametrize("installed_first", [False, True])
def test_replace_of_a_category_skill_backs_up_only_that_skill(tmp_path, installed_first):
    b = Bundle(tmp_path / "b").put("simpo", category="mlops").put("alpha", category="mlops").manifest()
    target = tmp_path / "t"
    if installed_first:
        assert b.sync(target)[0] == 0
    (target / "mlops/my-other-skill").mkdir(parents=True)
    (target / "mlops/my-other-skill/SKILL.md").write_text(skill_md("my-other-skill", "mine"))
    (target / "mlops/SKILL.md").write_text(skill_md("simpo", "a category that is a skill of its own"))
    (target / "mlops/notes.md").write_text("the category skill's own notes")
    if not installed_first:
        rc, out = b.sync(target)
        assert "simpo" in out["collisions"] and "alpha" in out["copied"]
    rc, out = b.sync(target, "--replace", "simpo")
    assert rc == 0, out
    (backup,) = out["backups"]
    assert sorted(os.listdir(backup)) == ["SKILL.md.bak", "notes.md"]  # that skill's own files, nothing else
    assert (target / "mlops/my-other-skill/SKILL.md").read_text() == skill_md("my-other-skill", "mine")
    assert (target / "mlops/simpo/SKILL.md").read_text() == skill_md("simpo")
    assert (target / "mlops/alpha/SKILL.md").read_text() == skill_md("alpha")
    rc, out = b.sync(target)
    assert rc == 0 and out["unchanged"] == ["alpha", "simpo"] and not out["user_deleted"] and not out["collisions"]


def test_replace_still_moves_the_whole_folder_of_a_plain_other_skill(bundle, target):
    theirs = target / "mine/alpha"
    (theirs / "references").mkdir(parents=True)
    (theirs / "SKILL.md").write_text(skill_md("alpha", "theirs"))
    (theirs / "references/r.md").write_text("r")
    rc, out = bundle.sync(target, "--replace", "alpha")
    assert rc == 0 and not theirs.exists()
    (backup,) = out["backups"]
    assert (Path(backup) / "references/r.md").read_text() == "r"


# ----------------------------------------------------------------------------- item 8: nothing blocks
def test_a_fifo_or_a_device_link_in_an_installed_skill_never_blocks(bundle, target):
    bundle.sync(target)
    os.mkfifo(target / "cat/alpha/pipe")
    (target / "cat/beta/zero").symlink_to("/dev/zero")
    bundle.put("alpha", "v2").put("beta", "v2").manifest()
    t0 = time.monotonic()
    rows = json.loads(run(bundle.path, "--target", str(target), "--list", "--json", timeout=20).stdout)
    assert {r["name"]: r["status"] for r in rows} == {"alpha": "edited", "beta": "edited"}
    rc, out = sync_json(bundle, target, timeout=20)
    assert rc == 0 and out["user_modified"] == ["alpha", "beta"]  # never read, never replaced: the user's
    assert "pipe" in out["messages"]["alpha"] and "zero" in out["messages"]["beta"]
    assert stat.S_ISFIFO(os.lstat(target / "cat/alpha/pipe").st_mode) and (target / "cat/beta/zero").is_symlink()
    p = run(bundle.path, "--target", str(target), "--diff", "beta", timeout=20)
    assert p.returncode == 0 and "zero: not a regular file" in p.stdout
    assert time.monotonic() - t0 < 20


def test_a_fifo_skill_md_elsewhere_in_the_target_never_blocks(bundle, target):
    (target / "mine/x").mkdir(parents=True)
    os.mkfifo(target / "mine/x/SKILL.md")
    rc, out = sync_json(bundle, target, timeout=20)
    assert rc == 0 and out["copied"] == ["alpha", "beta"]


def test_a_fifo_state_file_never_blocks_and_list_leaves_it(bundle, target):
    bundle.sync(target)
    (target / ".prefpilot/state.json").unlink()
    os.mkfifo(target / ".prefpilot/state.json")
    p = run(bundle.path, "--target", str(target), "--list", timeout=20)
    assert p.returncode == 2 and "state.json" in p.stderr and "not a regular file" in p.stderr
    assert stat.S_ISFIFO(os.lstat(target / ".prefpilot/state.json").st_mode)  # read-only: not moved aside
    rc, out = sync_json(bundle, target, timeout=20)
    assert rc == 1 and ".prefpilot" in out["errors"] and set(out["unchanged"]) == {"alpha", "beta"}
    assert list((target / ".prefpilot").glob("state.corrupt-*"))


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "-inf", "soon"])
def test_lock_timeout_must_be_a_finite_number_of_seconds(bundle, target, value):
    p = run(bundle.path, "--target", str(target), "--lock-timeout", value, timeout=20)
    assert p.returncode == 2 and "--lock-timeout" in p.stderr and not target.exists()


# ----------------------------------------------------------------------------- items 9 and 18: forged states
def forge(state, how):
    a = state["skills"]["alpha"]
    if how == "files-dotdot":
        a["files"] = {"../../etc/passwd": "0" * 64}
    elif how == "files-absolute":
        a["files"] = {"/etc/passwd": "0" * 64}
    elif how == "files-list":
        a["files"] = ["SKILL.md"]
    elif how == "files-bad-value":
        a["files"] = {"SKILL.md": 5}
    elif how == "version-list":
        a["version"] = ["0.1.0"]
    elif how == "version-dict":
        a["version"] = {"v": 1}
    elif how == "schema-list":
        state["schema_version"] = [1]
    elif how == "skills-list":
        state["skills"] = [a]
    elif how == "entry-list":
        state["skills"]["alpha"] = ["cat/alpha"]
    return state


@pytest.mark.parametrize("how", ["files-dotdot", "files-absolute", "files-list", "files-bad-value", "version-list",
                                 "version-dict", "schema-list", "skills-list", "entry-list", "deep", "not-json"])
def test_read_only_commands_report_a_damaged_state_and_leave_it(bundle, target, how):
    bundle.sync(target)
    path = target / ".prefpilot/state.json"
    if how == "deep":
        path.write_text('{"skills": ' + "[" * 100000 + "]" * 100000 + "}")
    elif how == "not-json":
        path.write_text("{nope")
    else:
        path.write_text(json.dumps(forge(json.loads(path.read_text()), how)))
    before = path.read_bytes()
    for args in (["--list"], ["--list", "--json"], ["--diff", "alpha"]):
        p = run(bundle.path, "--target", str(target), *args, timeout=30)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        msg = json.loads(p.stdout)["error"] if "--json" in args else p.stderr
        assert "state.json" in msg and "nothing was changed" in msg and len(msg.strip().splitlines()) == 1, msg
        assert path.read_bytes() == before and not list(path.parent.glob("state.corrupt-*"))
    rc, out = sync_json(bundle, target)  # a sync sets it aside (as before) and keeps every copy as the user's
    assert rc == 1 and ".prefpilot" in out["errors"] and list(path.parent.glob("state.corrupt-*"))


@pytest.mark.parametrize("path", ["../victim", "/etc", "cat/../../victim"])
def test_list_and_diff_with_a_forged_install_path_say_so(bundle, target, path):
    bundle.sync(target)
    sp = target / ".prefpilot/state.json"
    state = json.loads(sp.read_text())
    state["skills"]["alpha"]["path"] = path
    sp.write_text(json.dumps(state))
    p = run(bundle.path, "--target", str(target), "--list", "--json")
    rows = {r["name"]: r for r in json.loads(p.stdout)}
    assert p.returncode == 1 and rows["alpha"]["status"] == "error" and "not a plain relative path" in \
        rows["alpha"]["error"] and rows["beta"]["status"] == "pristine"
    p = run(bundle.path, "--target", str(target), "--diff", "alpha")
    assert p.returncode == 2 and "not a plain relative path" in p.stderr


def test_a_state_from_a_newer_sync_is_refused_untouched(bundle, target):
    bundle.sync(target)
    sp = target / ".prefpilot/state.json"
    state = json.loads(sp.read_text())
    state["schema_version"] = 99
    sp.write_text(json.dumps(state))
    before = sp.read_bytes()
    for args in ((), ("--list",)):
        p = run(bundle.path, "--target", str(target), *args)
        assert p.returncode == 2 and "newer" in p.stderr and sp.read_bytes() == before


# ----------------------------------------------------------------------------- item 12: a concurrent writer
WRITER = textwrap.dedent("""
    import os, sys, time
    dest, name, text, when = sys.argv[1:5]
    here = os.stat(".")
    open(os.path.join(os.path.dirname(dest), ".ready-" + os.path.basename(dest)), "w").close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:   # wait for sync to swap or remove the folder this process is in
        try:
            st = os.stat(dest)
            swapped = (st.st_ino, st.st_dev) != (here.st_ino, here.st_dev)
        except FileNotFoundError:
            swapped = when == "gone"
        if swapped:
            break
    else:
        sys.exit("the folder was never swapped")
    try:
        with open(name, "w") as fh:   # relative: into the folder this process is in
            fh.write(text)
        print("written")
    except OSError as exc:            # the folder is gone: the writer is told, nothing is lost silently
        print("refused", exc.errno)
""")


def found_anywhere(target, text):
    return [p for p in target.rglob("*")
            if p.is_file() and not p.is_symlink() and text in p.read_text(errors="replace")]


@pytest.mark.parametrize("name,op", [("late.txt", "update"), ("SKILL.md", "update"), ("late.txt", "uninstall")])
def test_a_write_by_a_process_inside_the_folder_during_the_swap_is_kept(tmp_path, name, op):
    b = Bundle(tmp_path / "b").put("alpha").manifest()
    target = tmp_path / "t"
    b.sync(target)
    dest = target / "cat/alpha"
    written = 0
    for trial in range(6):
        if op == "update":
            b.put("alpha", f"v{trial + 2}").manifest()
        elif trial:
            b.sync(target, "--reset", "alpha")  # install it again for the next removal
        ready = dest.parent / ".ready-alpha"
        ready.unlink(missing_ok=True)
        text = f"the user's words, trial {trial}, {op}"
        w = subprocess.Popen([sys.executable, "-c", WRITER, str(dest), name, text,
                              "gone" if op == "uninstall" else "swapped"],
                             cwd=dest, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        rc, out = b.sync(target, *(["--uninstall", "alpha"] if op == "uninstall" else []))
        said, err = w.communicate(timeout=40)
        assert w.returncode == 0 and rc in (0, 1), (said, err, out)
        if said.startswith("written"):
            written += 1
            assert found_anywhere(target, text), (trial, out)  # in the new copy or in a backup, never lost
            assert not list((target / ".prefpilot/trash").iterdir())
            if op == "update" and name == "late.txt":
                assert (dest / name).read_text() == text  # put back where the writer wrote it
                (dest / name).unlink()  # pristine again for the next trial
        else:
            assert said.startswith("refused"), said
        ready.unlink(missing_ok=True)
        if op == "uninstall" and dest.exists():
            import shutil
            shutil.rmtree(dest)
    assert written  # the probe did land in the window at least once


# ----------------------------------------------------------------------------- item 15: strays in staging
def test_links_and_strays_in_staging_and_trash_are_never_followed_and_never_wedge(bundle, target, tmp_path):
    bundle.sync(target)
    out, snap = outside_folder(tmp_path)
    before = snap()
    pp = target / ".prefpilot"
    (pp / "staging").mkdir(exist_ok=True)
    (pp / "trash").mkdir(exist_ok=True)
    (pp / "staging" / TOKEN).symlink_to(out, target_is_directory=True)
    (pp / "staging" / "not-a-token").symlink_to(out, target_is_directory=True)
    (pp / "staging" / "a-file").write_text("x")
    (pp / "trash" / ("cd" * 16)).symlink_to(out / "notes.md")
    (pp / "state.tmp-oddity").mkdir()
    bundle.put("alpha", "v2").manifest()
    for _ in range(2):
        rc, res = sync_json(bundle, target)
        assert rc == 0, res
        assert snap() == before
        assert "left alone" in res["messages"][".prefpilot"]
    assert res["unchanged"] == ["alpha", "beta"] and "v2" in (target / "cat/alpha/SKILL.md").read_text()


def test_a_planted_staging_folder_with_a_hard_link_out_chmods_nothing_outside(bundle, target, tmp_path):
    bundle.sync(target)
    out, snap = outside_folder(tmp_path)
    before = snap()
    planted = target / ".prefpilot/staging" / TOKEN
    planted.mkdir(parents=True)
    os.link(out / "notes.md", planted / "notes.md")  # same inode as the user's read-only file
    rc, res = sync_json(bundle, target)
    assert rc == 0 and snap() == before and not planted.exists()


# ----------------------------------------------------------------------------- item 18: flags
@pytest.mark.parametrize("args,flag", [(["--project", ""], "--project"), (["--diff", ""], "--diff"),
                                       (["--reset", ""], "--reset"), (["--replace", " "], "--replace"),
                                       (["--target", ""], "--target")])
def test_an_empty_value_is_an_error_naming_the_flag(bundle, tmp_path, args, flag):
    home = tmp_path / "home"
    env = dict(os.environ, HOME=str(home), HERMES_HOME=str(home / ".hermes"))
    env.pop("PREFPILOT_SKILLS_DIR", None)
    p = run(bundle.path, *args, env=env)
    assert p.returncode == 2 and flag in p.stderr and "empty" in p.stderr, p.stderr
    assert not home.exists()  # nothing installed into ~/.hermes/skills or anywhere


@pytest.mark.parametrize("args,named", [
    (["--list", "--reset", "alpha"], ["--list", "--reset"]),
    (["--list", "--diff", "alpha"], ["--list", "--diff"]),
    (["--diff", "alpha", "--uninstall"], ["--diff", "--uninstall"]),
    (["--list", "--only", "alpha"], ["--list", "--only"]),
    (["--uninstall", "--only", "alpha"], ["--uninstall", "--only"]),
    (["--uninstall", "alpha", "--replace", "alpha"], ["--uninstall", "--replace"]),
    (["--only", "beta", "--reset", "alpha"], ["--reset", "--only"]),
    (["--project", "P", "--target", "T"], ["--target", "--project"]),
    (["--write-manifest", "--target", "T"], ["--write-manifest", "--target"]),
])
def test_conflicting_flags_are_refused_naming_them(bundle, tmp_path, args, named):
    args = [str(tmp_path / a) if a in ("P", "T") else a for a in args]
    if "--target" not in args and "--project" not in args:
        args += ["--target", str(tmp_path / "t")]
    before = (bundle.path / "manifest.json").read_bytes()
    p = run(bundle.path, *args)
    assert p.returncode == 2 and all(f in p.stderr for f in named), p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "t").exists() and not (tmp_path / "T").exists() and not (tmp_path / "P").exists()
    assert (bundle.path / "manifest.json").read_bytes() == before


def test_combinations_that_make_sense_still_work(bundle, tmp_path):
    t = tmp_path / "flat"
    assert run(bundle.path, "--agent", "claude", "--target", str(t)).returncode == 0  # claude's layout, here
    assert (t / "alpha/SKILL.md").is_file()
    assert run(bundle.path, "--target", str(t), "--agent", "claude", "--list", "--dry-run").returncode == 0
    p = run(bundle.path, "--target", str(t), "--agent", "claude", "--diff", "alpha", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["diff"].endswith("equals the bundled version\n")
    assert run(bundle.path, "--target", str(t), "--agent", "claude", "--only", "alpha", "--reset", "alpha",
               "--dry-run").returncode == 0
    assert run(bundle.path, "--target", str(t), "--agent", "claude", "--uninstall", "--dry-run").returncode == 0


NAME_FORMS = {
    "comment": "name: alpha  # mine",
    "folded-strip": "name: >-\n  alpha",
    "folded": "name: >\n  alpha\n",
    "literal": "name: |\n  alpha",
    "double-quoted-comment": 'name: "alpha" # mine',
    "single-quoted": "name: 'alpha'",
    "escaped": 'name: "alph\\x61"',
    "next-line": "name:\n  alpha",
    "tagged": "name: !!str alpha",
    "anchored": "name: &n alpha",
    "indent-indicator": "name: >2-\n   alpha",
}


@pytest.mark.parametrize("form", sorted(NAME_FORMS))
def test_collision_detection_reads_the_name_as_yaml_does(bundle, target, form):
    front = f"{NAME_FORMS[form]}\ndescription: someone else's\n"
    assert yaml.safe_load(front)["name"].strip() == "alpha"  # the form really is the name alpha
    (target / "mine/x").mkdir(parents=True)
    (target / "mine/x/SKILL.md").write_text(f"---\n{front}---\n\n# x\n")
    rc, out = bundle.sync(target)
    assert out["collisions"] == ["alpha"] and str(target / "mine/x") in out["messages"]["alpha"]


FRONT_MATTERS = [
    "name: simpo", "name: simpo  # c", "name: 'sim''po'", 'name: "sim\\tpo"', "name: >-\n  sim\n  po",
    "name: |\n  sim\n  po\n", "name: >+\n  simpo\n\n", "name:\n  simpo\n  more", "name: simpo\n  more",
    "name: 'a\n  b'", 'name: "a\\\n  b"', "name: a#b", "name: ~", "name:", "name: [a, b]", "name: *x",
    "title: x\nname: second", "'name': quoted-key", "name: >\n\n  after-blank", "name: |-\n    deep\n   less",
    "name: '  padded  '", "name: >1\n  x", "  name: indented", "names: no", "name:no-space",
    "description: x\n  name: not-top-level",
]


@pytest.mark.parametrize("front", FRONT_MATTERS)
def test_the_name_reader_agrees_with_a_yaml_parser(front):
    try:
        want = yaml.safe_load(front)
        want = want.get("name") if isinstance(want, dict) else None
    except yaml.YAMLError:
        want = None
    want = want.strip() if isinstance(want, str) else None
    assert sync.front_matter_name(f"---\n{front}\n---\n") == (want or None), front


WORD = st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True)
FORMS = st.sampled_from(["{w}", "{w}  # c", "'{w}'", '"{w}"', '"{w}" # c', "'{w}' #c", ">-\n  {w}", ">\n  {w}\n",
                         "|\n  {w}", "|-\n    {w}", "\n  {w}", "!!str {w}", "&a {w}", ">2\n   {w}",
                         "\n  # c\n  {w}", "'{w}\n  '", '"{w}\\\n  "'])


@settings(max_examples=200, deadline=None)
@given(word=WORD, form=FORMS, before=st.sampled_from(["", "description: x\n", "# c\n", "a: 1\nb: [1, 2]\n"]),
       after=st.sampled_from(["", "\ndescription: y", "\n# trailing", "\nmetadata:\n  version: 1"]))
def test_the_name_reader_agrees_with_yaml_on_every_form_a_name_takes(word, form, before, after):
    front = before + "name: " + form.format(w=word) + after
    raw = yaml.safe_load(front)["name"]
    # a plain `yes`/`on` (a YAML 1.1 boolean) reads as its text: still a name an agent may match
    want = raw.strip() if isinstance(raw, str) else None if raw is None else word
    assert sync.front_matter_name(f"---\n{front}\n---\n") == want, front
