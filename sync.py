#!/usr/bin/env python3
"""Install or update the prefpilot skill bundle into an agent's skills directory.

Standard library only: this runs before anything else is installed.

    python sync.py [--target DIR | --agent hermes|claude|agents|codex|cursor [--project DIR]]
                   [--dry-run] [--json] [--only NAME...] [--reset NAME] [--replace NAME]
                   [--list | --diff NAME | --uninstall [NAME...]] [--write-manifest] [--lock-timeout SECONDS]

Invariants (each is kept by the line that says so below):
  I1  a user's edit is never overwritten or merged: only a copy whose hash still
      equals the origin hash we installed is ever replaced or removed;
  I2  a skill the user deleted is not re-added (only --reset brings it back);
  I3  nothing outside the target is written, whatever the state file says;
  I4  an update is atomic per skill, and a sync killed at any moment and run
      again ends whole (pending operations are journalled in the state file);
  I5  --reset moves the user's copy to a backup under .prefpilot/, never deletes it.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUNDLE_NAME = "prefpilot"
BUNDLE_VERSION = "0.2.0"
SCHEMA_VERSION = 1
STATE_DIR = ".prefpilot"          # everything of ours in a target lives here
STATE_FILE = "state.json"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
TOKEN_RE = re.compile(r"^[0-9a-f]{32}$")  # uuid4().hex: the only journal tokens sync writes
OWN_DIRS = ("staging", "trash", "backups")  # our folders under .prefpilot: real folders, never links
LOCK_TIMEOUT_S = 120.0
IGNORED = {"__pycache__", ".DS_Store"}
RESULT_KEYS = ("copied", "updated", "unchanged", "user_modified", "user_deleted",
               "removed", "kept_orphans", "collisions", "errors")


class UsageError(Exception):
    """Bad arguments or a bundle that cannot be trusted: exit 2, nothing written."""


# --------------------------------------------------------------------------- hashing
def iter_files(folder: Path):
    """Relative POSIX paths of the regular files under folder, sorted."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED)
        for f in files:
            if f in IGNORED or f.endswith(".pyc"):
                continue
            p = Path(root, f)
            out.append(p.relative_to(folder).as_posix())
    return sorted(out)


def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def folder_hashes(folder: Path) -> tuple[str, dict]:
    """(folder sha256, {relpath: file sha256}). The folder hash covers sorted
    relative paths and each file's bytes (through its digest), so renames count."""
    files = {rel: file_sha(folder / rel) for rel in iter_files(folder)}
    h = hashlib.sha256()
    for rel, digest in files.items():
        h.update(rel.encode() + b"\0" + digest.encode() + b"\n")
    return h.hexdigest(), files


def folder_sha(folder: Path) -> str | None:
    if not folder.is_dir() or folder.is_symlink():
        return None
    return folder_hashes(folder)[0]


# --------------------------------------------------------------------------- manifest
def bundle_skill_dirs(skills_root: Path) -> list[Path]:
    return sorted(p.parent for p in skills_root.rglob("SKILL.md") if not any(part in IGNORED for part in p.parts))


def build_manifest(skills_root: Path) -> dict:
    try:
        import yaml  # only the developer command needs it; sync itself reads JSON
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise UsageError("--write-manifest needs PyYAML to read SKILL.md front matter: pip install pyyaml") from exc
    skills = []
    for d in bundle_skill_dirs(skills_root):
        text = (d / "SKILL.md").read_text(encoding="utf-8")
        m = re.match(r"^---\n(.*?)\n---\n", text, re.S)
        if not m:
            raise UsageError(f"{d / 'SKILL.md'}: missing YAML front matter (--- ... ---)")
        meta = yaml.safe_load(m.group(1)) or {}
        sha, files = folder_hashes(d)
        extra = meta.get("metadata") if isinstance(meta.get("metadata"), dict) else {}
        skills.append({
            "name": meta.get("name", d.name),
            "path": d.relative_to(skills_root).as_posix(),
            "version": str(extra.get("version", meta.get("version", "0"))),  # Agent Skills spec: under metadata
            "description": meta.get("description", ""),
            "sha256": sha,
            "files": files,
        })
    return {"schema_version": SCHEMA_VERSION,
            "bundle": {"name": BUNDLE_NAME, "version": BUNDLE_VERSION},
            "skills": skills}


def load_bundle(bundle_dir: Path) -> dict:
    """Read manifest.json and check it against the skills on disk (exit 2 if stale)."""
    mpath = bundle_dir / "manifest.json"
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise UsageError(f"{mpath}: cannot read the bundle manifest ({str(exc)[:200]}); run "
                         "`python sync.py --write-manifest`")
    skills_root = bundle_dir / "skills"
    entries = manifest.get("skills") if isinstance(manifest, dict) else None
    if not isinstance(entries, list) or not all(
            isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("path"), str)
            and isinstance(s.get("sha256"), str) for s in entries):
        raise UsageError(f"{mpath}: not a bundle manifest (a 'skills' list of name/path/sha256 entries); run "
                         "`python sync.py --write-manifest`")
    names = [s["name"] for s in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"{mpath}: skill name(s) {', '.join(dupes)} appear more than once; names must be unique")
    listed = {s["path"] for s in manifest.get("skills", [])}
    on_disk = {d.relative_to(skills_root).as_posix() for d in bundle_skill_dirs(skills_root)}
    stale = sorted(listed ^ on_disk)
    for s in manifest.get("skills", []):
        if not NAME_RE.match(s.get("name", "")):
            raise UsageError(f"manifest.json: skill name {s.get('name')!r} is not lowercase letters/digits/hyphens")
        if s["path"] in on_disk and folder_sha(skills_root / s["path"]) != s["sha256"]:
            stale.append(s["path"])
    if stale:
        raise UsageError(f"manifest.json is stale for {sorted(set(stale))}: run `python sync.py --write-manifest` "
                         "(nothing was written)")
    return manifest


# --------------------------------------------------------------------------- file ops
def _make_writable(path: Path) -> None:
    """Installed copies may be read-only (packaged installs); we only ever call this
    on copies we are about to replace or remove because they are pristine (I1)."""
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            p = Path(root, n)
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | stat.S_IWUSR | stat.S_IRUSR | (stat.S_IXUSR if p.is_dir() else 0))
    if not path.is_symlink():
        path.chmod(path.stat().st_mode | stat.S_IWUSR | stat.S_IRUSR | stat.S_IXUSR)


def _rmtree(path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        return
    _make_writable(path)
    shutil.rmtree(path)


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy bytes only. copyfile creates each file afresh (mode 0o666 minus the umask), so a read-only
    bundle still installs writable copies without a chmod per file."""
    dst.mkdir(parents=True)
    made = {dst}
    for rel in iter_files(src):
        out = dst / rel
        if out.parent not in made:  # one mkdir per folder, not per file: each redundant one raises inside
            out.parent.mkdir(parents=True, exist_ok=True)
            made.add(out.parent)
        shutil.copyfile(src / rel, out)
        mode = (src / rel).stat().st_mode
        if mode & 0o111:  # keep scripts executable (only the x bits: the copy stays writable)
            out.chmod(out.stat().st_mode | (mode & 0o111))


class EditedDuringSync(Exception):
    """The user's copy changed between the check and the swap: the update is skipped (I1)."""


def _carry_foreign(old: Path, new: Path) -> None:
    """Keep what sync never installed (files the hash ignores, such as __pycache__/ or .DS_Store, and empty
    folders) when a pristine copy is replaced: only files sync installed are ever deleted."""
    ours = set(iter_files(old))
    for root, dirs, files in os.walk(old):
        rel_root = Path(root).relative_to(old)
        for f in files:
            rel = (rel_root / f).as_posix()
            if rel not in ours and not (new / rel).exists():
                (new / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(root, f), new / rel)
        if not dirs and not files and not (new / rel_root).exists():
            (new / rel_root).mkdir(parents=True)


BACKUP_SUFFIX = ".bak"


def _defuse_skill_files(folder: Path) -> None:
    """Rename every SKILL.md under a backup to SKILL.md.bak: agents scan the whole target (hidden folders
    included) and would load a backup as a live skill of the same name."""
    for p in sorted(folder.rglob("SKILL.md")):
        if p.is_file() and not p.is_symlink():
            os.rename(p, p.with_name(p.name + BACKUP_SUFFIX))


def scan_skills(target: Path) -> dict[str, list[Path]]:
    """Every skill folder below ``target`` by name (frontmatter name and folder name), as agents find them:
    any SKILL.md at any depth; our own .prefpilot folder holds none."""
    found: dict[str, list[Path]] = {}
    if not target.is_dir():
        return found
    for root, dirs, files in os.walk(target):
        dirs[:] = [d for d in dirs if not (Path(root) == target and d == STATE_DIR)]
        if "SKILL.md" in files:
            folder = Path(root)
            names = {folder.name}
            with contextlib.suppress(OSError, UnicodeDecodeError):
                m = re.match(r"^---\n(.*?)\n---", (folder / "SKILL.md").read_text(encoding="utf-8")[:4096], re.S)
                n = re.search(r"^name:\s*['\"]?([^'\"\n]+?)['\"]?\s*$", m.group(1), re.M) if m else None
                if n:
                    names.add(n.group(1).strip())
            for name in names:
                found.setdefault(name, []).append(folder)
    return found


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def target_lock(state_dir: Path, timeout: float = LOCK_TIMEOUT_S):
    """Serialise concurrent syncs on one target (flock; released by the kernel if killed).

    A second sync says that it waits, and gives up after ``timeout`` seconds (exit 2) instead of
    hanging behind a stopped one."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fh = open(state_dir / "lock", "a+")
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            fcntl = None
        deadline, said = time.monotonic() + timeout, False
        while True:
            try:
                if fcntl:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                else:  # pragma: no cover
                    import msvcrt
                    msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    raise UsageError(f"another sync has held {state_dir / 'lock'} for {timeout:g} s; if none is "
                                     "running (a stopped process keeps the lock), end it and run sync.py again")
                if not said:
                    print(f"sync.py: waiting for another sync on {state_dir.parent} (gives up after {timeout:g} s)",
                          file=sys.stderr)
                    said = True
                time.sleep(0.1)
        yield
    finally:
        fh.close()


# --------------------------------------------------------------------------- the syncer
class Syncer:
    def __init__(self, bundle_dir: Path, target: Path, layout: str, dry_run: bool,
                 lock_timeout: float = LOCK_TIMEOUT_S, only: list[str] | None = None, replace: str | None = None):
        self.lock_timeout = lock_timeout
        self.only = set(only) if only else None    # --only: sync just these skills
        self.replace = replace                     # --replace: back up another skill of this name, install ours
        self.others: dict[str, list[Path]] = {}    # skills below the target by name (for name collisions)
        self.bundle_dir = bundle_dir
        self.skills_root = bundle_dir / "skills"
        self.target = target
        self.layout = layout  # "tree" keeps the bundle's folders (hermes); "flat" is <name>/ (claude)
        self.dry_run = dry_run
        self.state_dir = target / STATE_DIR
        self.result = {k: [] for k in RESULT_KEYS}
        self.messages: dict[str, str] = {}
        self.backups: list[str] = []
        self.dirty = False  # state changes not yet saved (fresh installs are saved once, at the end)

    # -- paths ---------------------------------------------------------------
    def dest_for(self, rel: str) -> Path:
        """Resolve an install path and refuse anything that leaves the target (I3)."""
        p = Path(rel)
        if p.is_absolute() or ".." in p.parts or not rel or rel.startswith("."):
            raise ValueError(f"install path {rel!r} is not a plain relative path")
        dest = self.target / p
        # Every existing parent must stay inside the target once symlinks are resolved.
        real_target = self.target.resolve()
        parent = dest.parent.resolve()
        if parent != real_target and real_target not in parent.parents:
            raise ValueError(f"install path {rel!r} leaves the target through a symlink")
        return dest

    def check_own_dirs(self) -> None:
        """.prefpilot and its folders must be real folders inside the target (I3): a link there would make
        staging, trash, backups or the lock land outside it. Refused before anything is written."""
        for p in (self.state_dir, *(self.state_dir / d for d in OWN_DIRS), self.state_dir / STATE_FILE,
                  self.state_dir / "lock"):
            if p.is_symlink():
                raise UsageError(f"{p} is a symbolic link; prefpilot keeps its state in real files inside the "
                                 "target: remove the link (nothing was written)")
        for p in (self.state_dir, *(self.state_dir / d for d in OWN_DIRS)):
            if p.exists() and not p.is_dir():
                raise UsageError(f"{p} is not a folder; move it away and run sync.py again (nothing was written)")

    def install_rel(self, skill: dict) -> str:
        return skill["name"] if self.layout == "flat" else skill["path"]

    # -- state ---------------------------------------------------------------
    def load_state(self) -> dict:
        path = self.state_dir / STATE_FILE
        empty = {"schema_version": SCHEMA_VERSION, "skills": {}, "pending": {}}
        if not path.exists():
            return empty
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(state, dict) or not isinstance(state.get("skills"), dict):
                raise ValueError("not a state object")
            state.setdefault("pending", {})
            if not isinstance(state["pending"], dict):
                raise ValueError("pending is not an object")
            for name, entry in list(state["skills"].items()):
                if not (NAME_RE.match(name) and isinstance(entry, dict)
                        and isinstance(entry.get("origin"), str) and isinstance(entry.get("path"), str)):
                    raise ValueError(f"bad entry {name!r}")
            return state
        except (OSError, ValueError) as exc:
            # A damaged state cannot tell pristine from edited copies, so we start from an
            # empty one: every existing folder then counts as a collision and is kept (I1).
            if not self.dry_run:
                keep = self.state_dir / f"state.corrupt-{int(time.time())}-{uuid.uuid4().hex[:6]}.json"
                with contextlib.suppress(OSError):
                    os.replace(path, keep)
            self.result["errors"].append(STATE_DIR)
            self.messages[STATE_DIR] = f"state file was unreadable ({exc}); kept aside, existing skills treated as the user's"
            return empty

    def save_state(self, state: dict) -> None:
        if self.dry_run:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / f"state.tmp-{uuid.uuid4().hex}"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(state, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_dir / STATE_FILE)
        _fsync_dir(self.state_dir)

    # -- crash recovery (I4) ----------------------------------------------------
    def recover(self, state: dict) -> None:
        """Finish or roll back operations a killed sync left half done."""
        for name, op in list(state["pending"].items()):
            try:
                token = op["token"]
                if not (isinstance(token, str) and TOKEN_RE.match(token) and op.get("kind") in ("install", "remove")):
                    raise ValueError("not an entry sync wrote")
                dest = self.dest_for(op["path"])
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                # I3: a journal entry we did not write is dropped, and nothing it names is touched
                state["pending"].pop(name)
                self._note("errors", STATE_DIR, f"ignored a pending entry for {str(name)[:64]!r} in the state file "
                                                f"({exc}); nothing it names was touched")
                continue
            staging = self.state_dir / "staging" / token
            trash = self.state_dir / "trash" / token
            new = op.get("new")
            present = dest.exists() or dest.is_symlink()
            record = {"origin": new, "path": op["path"], "version": op.get("version", "")}
            if op.get("kind") == "remove":
                if not present:
                    state["skills"].pop(name, None)  # the removal got as far as the rename
            elif present:
                if new and folder_sha(dest) == new:
                    state["skills"][name] = record  # swapped in, state not yet written
            elif staging.is_dir() and folder_sha(staging) == new:
                os.rename(staging, dest)  # the swap was half done: finish it
                state["skills"][name] = record
            elif trash.is_dir():
                os.rename(trash, dest)  # the copy was incomplete: put the old pristine copy back
            else:
                # We moved the copy away (a --reset backup) before the kill: forget the entry so
                # the bundled skill is installed again rather than read as a user deletion.
                state["skills"].pop(name, None)
            _rmtree(staging)
            _rmtree(trash)
            state["pending"].pop(name)
        # Leftovers no journal entry points at (killed before the journal write) are ours to drop.
        for sub in ("staging", "trash"):
            d = self.state_dir / sub
            if d.is_dir():
                for child in d.iterdir():
                    _rmtree(child)
        for tmp in self.state_dir.glob("state.tmp-*"):
            tmp.unlink()
        if (self.state_dir / "backups").is_dir():
            _defuse_skill_files(self.state_dir / "backups")
        self.save_state(state)

    # -- atomic operations ---------------------------------------------------------
    def _begin(self, state, name, kind, rel, new=None, old=None, version=""):
        token = uuid.uuid4().hex
        state["pending"][name] = {"kind": kind, "path": rel, "new": new, "old": old,
                                  "token": token, "version": version}
        self.save_state(state)
        return self.state_dir / "staging" / token, self.state_dir / "trash" / token

    def install(self, state, skill, rel, backup_of_user: bool = False) -> None:
        """Copy the bundled skill beside the destination, then swap it in (I4)."""
        src = self.skills_root / skill["path"]
        dest = self.dest_for(rel)
        # per-file origin hashes: `--diff` tells the files the user changed from those the bundle changed
        record = {"origin": skill["sha256"], "path": rel, "version": skill["version"], "files": skill.get("files", {})}
        if not (dest.exists() or dest.is_symlink()):
            # Nothing to replace, so no journal: if we are killed after the rename but before the
            # state is saved, the next run finds a byte-identical folder and adopts it.
            staging = self.state_dir / "staging" / uuid.uuid4().hex
            staging.parent.mkdir(parents=True, exist_ok=True)
            _copy_tree(src, staging)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staging, dest)
            state["skills"][skill["name"]] = record
            self.dirty = True
            return
        staging, trash = self._begin(state, skill["name"], "install", rel, new=skill["sha256"],
                                     old=state["skills"].get(skill["name"], {}).get("origin"),
                                     version=skill["version"])
        staging.parent.mkdir(parents=True, exist_ok=True)
        trash.parent.mkdir(parents=True, exist_ok=True)
        _copy_tree(src, staging)
        if backup_of_user:
            # I5: the user's copy is moved, never deleted.
            bdir = self.state_dir / "backups" / f"{skill['name']}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
            bdir.parent.mkdir(parents=True, exist_ok=True)
            os.rename(dest, bdir)
            _defuse_skill_files(bdir)
            self.backups.append(str(bdir))
        else:
            _make_writable(dest)
            os.rename(dest, trash)
            expected = state["skills"].get(skill["name"], {}).get("origin")
            if expected and folder_sha(trash) != expected:
                # I1: edited while we copied the new version: put it back untouched and skip this update
                os.rename(trash, dest)
                _rmtree(staging)
                state["pending"].pop(skill["name"])
                self.save_state(state)
                raise EditedDuringSync(f"{dest} changed while the new version was being copied; kept as is")
            _carry_foreign(trash, staging)
        os.rename(staging, dest)
        _fsync_dir(dest.parent)
        state["skills"][skill["name"]] = record
        state["pending"].pop(skill["name"])
        self.save_state(state)
        _rmtree(trash)

    def remove(self, state, name, entry) -> None:
        dest = self.dest_for(entry["path"])
        _, trash = self._begin(state, name, "remove", entry["path"], old=entry["origin"])
        trash.parent.mkdir(parents=True, exist_ok=True)
        _make_writable(dest)
        os.rename(dest, trash)
        state["skills"].pop(name)
        state["pending"].pop(name)
        self.save_state(state)
        _rmtree(trash)

    # -- the plan -----------------------------------------------------------------
    def run(self, manifest: dict, reset: str | None = None) -> dict:
        bundled = {s["name"]: s for s in manifest["skills"]}
        for flag, names in (("--reset", [reset] if reset else []), ("--replace", [self.replace] if self.replace
                                                                      else []), ("--only", sorted(self.only or []))):
            unknown = [n for n in names if n not in bundled]
            if unknown:
                raise UsageError(f"{flag} {', '.join(unknown)}: no such skill in the bundle (have: "
                                 f"{', '.join(sorted(bundled))})")
        if self.target.exists() and not self.target.is_dir():
            raise UsageError(f"target {self.target} is a file, not a folder (nothing was written)")
        self.check_own_dirs()
        if not self.dry_run:
            try:
                self.target.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UsageError(f"cannot create the target {self.target}: {exc.strerror} (nothing was written)")
            if not os.access(self.target, os.W_OK | os.X_OK):
                raise UsageError(f"target {self.target} is not writable (nothing was written)")
        lock = target_lock(self.state_dir, self.lock_timeout) if not self.dry_run else contextlib.nullcontext()
        with lock:
            state = self.load_state()
            if not self.dry_run:
                self.recover(state)
            self.others = scan_skills(self.target)
            for name in sorted(bundled):
                if self.only is None or name in self.only:
                    self._one(state, bundled[name], reset == name)
            for name in sorted(set(state["skills"]) - set(bundled)):
                if self.only is None:
                    self._gone(state, name)
            if self.dirty:
                self.save_state(state)
        out = {k: sorted(set(v)) for k, v in self.result.items()}
        out.update(target=str(self.target), dry_run=self.dry_run, messages=self.messages, backups=self.backups)
        return out

    # -- read-only views and uninstall ------------------------------------------------
    def listing(self, manifest: dict) -> list[dict]:
        """Each bundled or tracked skill: bundle vs installed version and pristine/edited/deleted/orphan."""
        state = self.load_state()
        bundled = {s["name"]: s for s in manifest["skills"]}
        rows = []
        for name in sorted(set(bundled) | set(state["skills"])):
            b, e = bundled.get(name), state["skills"].get(name)
            row = {"name": name, "bundle_version": b["version"] if b else None,
                   "installed_version": e.get("version") if e else None, "path": e["path"] if e else None}
            if e is None:
                row["status"] = "not installed"
            else:
                dest = self.dest_for(e["path"])
                sha = folder_sha(dest)
                row["status"] = ("deleted" if sha is None and not dest.is_symlink() else
                                 "orphan" if b is None else "pristine" if sha == e["origin"] else "edited")
                if row["status"] == "pristine" and b and b["sha256"] != e["origin"]:
                    row["status"] = "pristine, update available"
            rows.append(row)
        return rows

    def uninstall(self, manifest: dict, names: list[str]) -> dict:
        """Remove our pristine copies (all, or ``names``); edited copies stay and are reported (I1)."""
        with target_lock(self.state_dir, self.lock_timeout) if not self.dry_run else contextlib.nullcontext():
            state = self.load_state()
            if not self.dry_run:
                self.recover(state)
            unknown = [n for n in names if n not in state["skills"]]
            if unknown:
                raise UsageError(f"--uninstall {', '.join(unknown)}: not installed by sync.py here (installed: "
                                 f"{', '.join(sorted(state['skills'])) or 'none'})")
            for name in names or sorted(state["skills"]):
                self._retire(state, name, "user_modified", "edited: kept at {dest} (untracked from now on)",
                             gone_note="was already deleted")
            if self.dirty:
                self.save_state(state)
        out = {k: sorted(set(v)) for k, v in self.result.items()}
        out.update(target=str(self.target), dry_run=self.dry_run, messages=self.messages, backups=self.backups)
        return out

    def diff(self, manifest: dict, name: str) -> str:
        """A unified diff per file of the user's copy against the bundled version, saying who changed what."""
        import difflib
        state = self.load_state()
        bundled = {s["name"]: s for s in manifest["skills"]}
        if name not in bundled:
            raise UsageError(f"--diff {name}: no such skill in the bundle (have: {', '.join(sorted(bundled))})")
        entry = state["skills"].get(name)
        dest = self.dest_for(entry["path"] if entry else self.install_rel(bundled[name]))
        if not dest.is_dir():
            raise UsageError(f"--diff {name}: no installed copy at {dest}")
        src = self.skills_root / bundled[name]["path"]
        origin = (entry or {}).get("files", {})
        mine, theirs = set(iter_files(dest)), set(iter_files(src))
        out = []
        for rel in sorted(mine | theirs):
            a = (src / rel).read_text(encoding="utf-8", errors="replace").splitlines(True) if rel in theirs else []
            b = (dest / rel).read_text(encoding="utf-8", errors="replace").splitlines(True) if rel in mine else []
            if a == b:
                continue
            who = ("you changed it" if rel in mine and origin.get(rel) and file_sha(dest / rel) != origin[rel]
                   else "you added it" if rel not in origin and rel in mine and rel not in theirs
                   else "the bundle changed it" if origin.get(rel) and rel in theirs
                   and file_sha(src / rel) != origin[rel] else "changed")
            out.append(f"# {rel}: {who}\n")
            out += difflib.unified_diff(a, b, f"bundle/{rel}", f"yours/{rel}")
        return "".join(out) or f"{name}: your copy equals the bundled version\n"

    def _note(self, key, name, message=None):
        self.result[key].append(name)
        if message:
            self.messages[name] = message

    def _one(self, state, skill, reset: bool) -> None:
        name = skill["name"]
        try:
            rel = self.install_rel(skill)
            dest = self.dest_for(rel)
            entry = state["skills"].get(name)
            if entry and entry["path"] != rel:
                entry = self._moved(state, skill, entry, rel)
                if entry is None:
                    return
            exists = dest.exists() or dest.is_symlink()
            # Another skill of this name elsewhere in the target (an agent's own, say hermes'
            # mlops/training/trl-fine-tuning) would make the name ambiguous: not installed, unless --replace.
            elsewhere = [p for p in self.others.get(name, []) if p.resolve() != dest.resolve()
                         and not (entry and p.resolve() == self.dest_for(entry["path"]).resolve())]
            if self.replace == name and (elsewhere or (exists and entry is None)):
                for p in elsewhere + ([dest] if exists and entry is None else []):
                    self._back_up(p, name)
                elsewhere, exists = [], False
            if elsewhere and entry is None:
                where = ", ".join(str(p) for p in elsewhere)
                self._note("collisions", name, f"another skill named {name} is at {where}; installing ours would "
                                               f"make the name ambiguous. `--replace {name}` backs that one up "
                                               "and installs prefpilot's")
                return
            if reset:
                if not self.dry_run:
                    self.install(state, skill, rel, backup_of_user=exists and folder_sha(dest) != skill["sha256"])
                self._note("updated" if exists else "copied", name)
                return
            if dest.is_symlink():
                # A symlinked skill folder is the user's arrangement: left alone.
                self._note("user_modified" if entry else "collisions", name, "symlinked folder left alone")
                return
            if entry is None:
                if not exists:
                    if not self.dry_run:
                        self.install(state, skill, rel)
                    self._note("copied", name)
                elif folder_sha(dest) == skill["sha256"]:
                    # Byte-identical: adopt it so future updates apply.
                    if not self.dry_run:
                        state["skills"][name] = {"origin": skill["sha256"], "path": rel, "version": skill["version"],
                                                 "files": skill.get("files", {})}
                        self.dirty = True
                    self._note("unchanged", name)
                else:
                    self._note("collisions", name, f"{dest} exists and is not ours; kept")
                return
            if not exists:
                self._note("user_deleted", name)  # I2: respected, not re-added
                return
            current = folder_sha(dest)
            if current != entry["origin"] and current == skill["sha256"]:
                # the user's copy already equals the new version (edited to it, or copied by hand): adopt it
                if not self.dry_run:
                    state["skills"][name] = {**entry, "origin": skill["sha256"], "version": skill["version"],
                                             "files": skill.get("files", {})}
                    self.dirty = True
                self._note("unchanged", name, "your copy equals the new bundled version: adopted")
            elif current != entry["origin"]:
                self._note("user_modified", name)  # I1: kept as the user left it
            elif current == skill["sha256"]:
                self._note("unchanged", name)
            else:
                if not self.dry_run:
                    self.install(state, skill, rel)
                self._note("updated", name)
        except EditedDuringSync as exc:
            self._note("user_modified", name, str(exc))
        except (OSError, ValueError) as exc:
            self._note("errors", name, str(exc))

    def _moved(self, state, skill, entry, rel):
        """The bundle moved a skill to another folder: a pristine copy follows it; an edited one stays (I1).
        Returns the entry to continue with, or None when this skill is done."""
        name = skill["name"]
        old = self.dest_for(entry["path"])
        new = self.dest_for(rel)
        if not (old.exists() or old.is_symlink()):
            # I2: the user deleted it; it stays deleted at its new path too
            if not self.dry_run:
                state["skills"][name] = {**entry, "path": rel}
                self.dirty = True
            self._note("user_deleted", name)
            return None
        if old.is_symlink() or folder_sha(old) != entry["origin"]:
            self._note("user_modified", name, f"moved in the bundle to {rel}; your edited copy stays at "
                                              f"{entry['path']} (sync.py --reset {name} installs the new one)")
            return None
        if new.exists() or new.is_symlink():
            self._note("collisions", name, f"moved in the bundle to {rel}, which is taken; left at {entry['path']}")
            return None
        if not self.dry_run:
            new.parent.mkdir(parents=True, exist_ok=True)
            os.rename(old, new)  # one rename: never half moved
            with contextlib.suppress(OSError):
                old.parent.rmdir()  # a category folder we emptied
            entry = {**entry, "path": rel}
            state["skills"][name] = entry
            self.save_state(state)
        else:
            entry = {**entry, "path": rel}
        self.messages[name] = f"moved from {old.relative_to(self.target)} to {rel}"
        return entry

    def _back_up(self, folder: Path, name: str) -> None:
        """--replace: move another skill of our name into .prefpilot/backups (defused), never delete it."""
        if self.dry_run:
            self.backups.append(f"(would back up {folder})")
            return
        bdir = self.state_dir / "backups" / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        bdir.parent.mkdir(parents=True, exist_ok=True)
        os.rename(folder, bdir)
        _defuse_skill_files(bdir)
        self.backups.append(str(bdir))

    def _gone(self, state, name) -> None:
        """A skill we installed that the bundle no longer ships."""
        self._retire(state, name, "kept_orphans", None)

    def _retire(self, state, name, edited_key: str, edited_note: str | None, gone_note: str | None = None) -> None:
        """Stop tracking a skill: our pristine copy is removed; an edited one stays, untracked (I1); a copy the
        user already deleted is just forgotten. Forgetting touches no file, so it is saved once, at the end."""
        entry = state["skills"][name]
        try:
            dest = self.dest_for(entry["path"])
            if not (dest.exists() or dest.is_symlink()):
                if not self.dry_run:
                    state["skills"].pop(name)
                    self.dirty = True
                if gone_note:
                    self._note("removed", name, gone_note)
            elif not dest.is_symlink() and folder_sha(dest) == entry["origin"]:
                if not self.dry_run:
                    self.remove(state, name, entry)
                self._note("removed", name)
            else:
                if not self.dry_run:
                    state["skills"].pop(name)
                    self.dirty = True
                self._note(edited_key, name, edited_note.format(dest=dest) if edited_note else None)
        except (OSError, ValueError) as exc:
            self._note("errors", name, str(exc))


# --------------------------------------------------------------------------- CLI
# agent -> (user folder, project folder under --project, layout). hermes keeps categories; the others read
# <name>/SKILL.md one level down.
PRESETS = {
    "hermes": (None, None, "tree"),
    "claude": (Path(".claude") / "skills", Path(".claude") / "skills", "flat"),
    "agents": (Path(".agents") / "skills", Path(".agents") / "skills", "flat"),  # Codex and other agents
    "codex": (Path(".agents") / "skills", Path(".agents") / "skills", "flat"),
    "cursor": (Path(".cursor") / "skills", Path(".cursor") / "skills", "flat"),
}


def resolve_target(args) -> tuple[Path, str]:
    if args.target is not None and not args.target.strip():
        raise UsageError("--target is empty: give the skills folder to install into")
    if args.project:
        agent = args.agent or "claude"
        if PRESETS[agent][1] is None:
            raise UsageError(f"--project: {agent} has no project-level skills folder; use --target")
        return Path(args.project) / PRESETS[agent][1], PRESETS[agent][2]
    if args.agent and args.agent != "hermes":
        user, _, layout = PRESETS[args.agent]
        return (Path(args.target) if args.target else Path.home() / user), layout
    if args.target:
        return Path(args.target), "tree"
    if os.environ.get("PREFPILOT_SKILLS_DIR"):
        return Path(os.environ["PREFPILOT_SKILLS_DIR"]), "tree"
    hermes_home = Path(os.environ.get("HERMES_HOME", Path.home() / ".hermes"))
    return hermes_home / "skills", "tree"


def summary(out: dict) -> str:
    lines = [f"prefpilot skills -> {out['target']}" + (" (dry run: nothing written)" if out["dry_run"] else "")]
    for key in RESULT_KEYS:
        if out[key]:
            lines.append(f"  {key.replace('_', ' ')}: {', '.join(out[key])}")
    for name, msg in out["messages"].items():
        lines.append(f"  note: {name}: {msg}")
    for b in out["backups"]:
        lines.append(f"  your previous copy was kept at {b}")
    if len(lines) == 1:
        lines.append("  nothing to do")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sync.py", description="Install or update the prefpilot skills "
                                 "without ever overwriting your edits.")
    ap.add_argument("--target", help="skills directory to install into")
    ap.add_argument("--agent", choices=sorted(PRESETS), help="install for this agent's default folder (hermes "
                    "~/.hermes/skills, claude ~/.claude/skills, agents/codex ~/.agents/skills, cursor ~/.cursor/skills)")
    ap.add_argument("--project", metavar="DIR", help="install into a project's folder for --agent (default claude: "
                    "DIR/.claude/skills)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="sync only these skills")
    ap.add_argument("--replace", metavar="NAME", help="back up another skill that has this name and install ours")
    ap.add_argument("--list", action="store_true", help="each skill: installed vs bundled version, "
                    "pristine/edited/deleted/orphan")
    ap.add_argument("--uninstall", nargs="*", metavar="NAME", help="remove our unedited copies (all, or NAMEs); "
                    "edited copies are kept")
    ap.add_argument("--diff", metavar="NAME", help="per-file diff of your copy of NAME against the bundled version")
    ap.add_argument("--dry-run", action="store_true", help="report the plan, write nothing")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--reset", metavar="NAME", help="replace the installed copy of NAME with the bundled one")
    ap.add_argument("--write-manifest", action="store_true", help="regenerate manifest.json from skills/")
    ap.add_argument("--lock-timeout", type=float, default=LOCK_TIMEOUT_S, metavar="SECONDS",
                    help=f"how long to wait for another sync on the same target (default {LOCK_TIMEOUT_S:g})")
    ap.add_argument("--bundle", default=str(HERE), help=argparse.SUPPRESS)
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    bundle_dir = Path(args.bundle)
    try:
        if args.write_manifest:
            manifest = build_manifest(bundle_dir / "skills")
            text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
            (bundle_dir / "manifest.json").write_text(text, encoding="utf-8")
            print(f"wrote {bundle_dir / 'manifest.json'} ({len(manifest['skills'])} skills)")
            return 0
        manifest = load_bundle(bundle_dir)
        target, layout = resolve_target(args)
        syncer = Syncer(bundle_dir, target, layout, args.dry_run, args.lock_timeout, only=args.only,
                        replace=args.replace)
        if args.list:
            rows = syncer.listing(manifest)
            print(json.dumps(rows, indent=1) if args.json else "\n".join(
                f"{r['name']:28} {r['status']:28} installed {r['installed_version'] or '-':8} bundle "
                f"{r['bundle_version'] or '-'}" for r in rows) or "no skills")
            return 0
        if args.diff:
            print(syncer.diff(manifest, args.diff), end="")
            return 0
        if args.uninstall is not None:
            out = syncer.uninstall(manifest, args.uninstall)
        else:
            out = syncer.run(manifest, reset=args.reset)
    except OSError as exc:  # an unusable target or state folder: one line, not a traceback
        exc = UsageError(f"{exc.filename or 'target'}: {exc.strerror or exc}")
        if args.json:
            print(json.dumps({"error": str(exc)}))
        else:
            print(f"sync.py: error: {exc}", file=sys.stderr)
        return 2
    except UsageError as exc:
        if args.json:
            print(json.dumps({"error": str(exc)}))
        else:
            print(f"sync.py: error: {exc}", file=sys.stderr)
        return 2
    try:
        print(json.dumps(out, indent=1) if args.json else summary(out))
    except BrokenPipeError:  # `sync.py | head`: the reader left; the sync itself is done
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
