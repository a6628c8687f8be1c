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
  I3  nothing outside the target is written, whatever the state file says: a symlink is never followed
      (a symlinked skill folder is reported and left alone) and only regular files are ever read;
  I4  an update is atomic per skill, and a sync killed at any moment and run
      again ends whole (pending operations are journalled in the state file);
  I5  --reset moves the user's copy to a backup under .prefpilot/, never deletes it.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import math
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


# --------------------------------------------------------------------------- reading, never following a link
MAX_STATE_BYTES = 64 << 20       # state.json: a real one holds a few KiB per skill
MAX_MANIFEST_BYTES = 16 << 20
FRONT_MATTER_BYTES = 16 << 10    # the part of a SKILL.md read for its name
MAX_DIFF_BYTES = 8 << 20         # --diff shows files up to this size
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


class NotRegularFile(OSError):
    """A path sync would read is a link, FIFO, socket or device: never opened (it could block, never end,
    or lead out of the target)."""

    def __init__(self, path, kind="not a regular file"):
        super().__init__(errno.EINVAL, f"{kind}: a link, FIFO or device is never read", str(path))


def lkind(path) -> str:
    """What is at path itself (a final symlink is not followed): missing, link, dir, file or special."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISDIR(mode):
        return "dir"
    return "file" if stat.S_ISREG(mode) else "special"


def _open_fd(path, checked: bool = False) -> int:
    """The only way sync opens a file to read it: checked to be a regular file before opening (lstat, or the
    caller's own no-follow directory listing: ``checked``), then opened with O_NOFOLLOW | O_NONBLOCK and
    checked again on the descriptor, so a FIFO, a device or a link swapped in meanwhile is refused at once
    instead of blocking or being followed."""
    if not checked:
        kind = lkind(path)
        if kind != "file":
            raise (FileNotFoundError(errno.ENOENT, "no such file", str(path)) if kind == "missing"
                   else NotRegularFile(path, "a symbolic link" if kind == "link" else "not a regular file"))
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegularFile(path, "a symbolic link") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotRegularFile(path)
    return fd


def open_regular(path):
    return os.fdopen(_open_fd(path), "rb")


def read_regular(path, limit: int) -> bytes:
    """At most limit + 1 bytes of a regular file (the caller tells a file over the limit by its length)."""
    with open_regular(path) as fh:
        return fh.read(limit + 1)


# --------------------------------------------------------------------------- hashing
def folder_entries(folder: Path) -> dict[str, str]:
    """{relative POSIX path: kind} of everything below folder that is not a folder, sorted: regular files
    ('file'), and links and FIFOs or devices ('link', 'special'), which are listed but never opened or
    followed (a linked folder is an entry, not walked). IGNORED names and .pyc files are skipped."""
    out = {}
    if lkind(folder) != "dir":
        return out
    stack = [("", os.fspath(folder))]
    while stack:
        prefix, path = stack.pop()
        with os.scandir(path) as it:
            for e in it:  # DirEntry's type checks do not follow links (and need no extra stat)
                if e.name in IGNORED:
                    continue
                if e.is_dir(follow_symlinks=False):
                    stack.append((f"{prefix}{e.name}/", e.path))
                elif not e.name.endswith(".pyc"):
                    out[prefix + e.name] = ("link" if e.is_symlink() else
                                            "file" if e.is_file(follow_symlinks=False) else "special")
    return dict(sorted(out.items()))


def file_sha(path, checked: bool = False) -> str:
    h = hashlib.sha256()
    fd = _open_fd(path, checked)
    try:
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


def folder_hashes(folder: Path) -> tuple[str, dict]:
    """(folder sha256, {relpath: file sha256}). The folder hash covers sorted relative paths and each file's
    bytes (through its digest), so renames count. A link, FIFO or device counts as '!link' / '!special'
    (never read): no origin hash has one, so a folder holding one is never pristine, never replaced."""
    base = os.fspath(folder)
    files = {rel: file_sha(os.path.join(base, rel), checked=True) if kind == "file" else f"!{kind}"
             for rel, kind in folder_entries(folder).items()}
    h = hashlib.sha256()
    for rel, digest in files.items():
        h.update(rel.encode() + b"\0" + digest.encode() + b"\n")
    return h.hexdigest(), files


def folder_sha(folder: Path) -> str | None:
    if lkind(folder) != "dir":
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
        data = read_regular(mpath, MAX_MANIFEST_BYTES)
        if len(data) > MAX_MANIFEST_BYTES:
            raise ValueError(f"larger than {MAX_MANIFEST_BYTES >> 20} MiB")
        manifest = json.loads(data.decode("utf-8"))
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
        if s["path"] in on_disk:
            sha, files = folder_hashes(skills_root / s["path"])
            odd = [rel for rel, digest in files.items() if digest.startswith("!")]
            if odd:  # installs copy regular files only
                raise UsageError(f"skills/{s['path']}/{odd[0]} is not a regular file (a link, FIFO or device); "
                                 "the bundle ships regular files only")
            if sha != s["sha256"]:
                stale.append(s["path"])
    if stale:
        raise UsageError(f"manifest.json is stale for {sorted(set(stale))}: run `python sync.py --write-manifest` "
                         "(nothing was written)")
    return manifest


# --------------------------------------------------------------------------- file ops
# The one link policy (I3): sync moves, renames, backs up, deletes, chmods or writes into a folder only when
# lkind() says it is a real folder (Syncer.real_folder for skill folders), every walk below one is os.walk or
# scandir without following links, checking each entry without following it, and every read goes through
# _open_fd. A symlink is an entry of its own: it may be renamed along with its folder, never followed.
def _make_writable(path: Path) -> None:
    """Installed copies may be read-only (packaged installs); we only ever call this on copies we are about
    to replace or remove because they are pristine (I1), and on our own staging/trash folders. Only folders
    are chmodded (renaming or unlinking a file needs its folder's write bit, not its own), and never a link:
    chmod would follow it out of the target (a file could be a hard link to one outside, a folder cannot)."""
    if lkind(path) != "dir":
        return
    for root, dirs, _files in os.walk(path):
        for n in dirs:
            p = Path(root, n)
            if lkind(p) == "dir":
                p.chmod(p.stat().st_mode | stat.S_IWUSR | stat.S_IRUSR | stat.S_IXUSR)
    path.chmod(path.stat().st_mode | stat.S_IWUSR | stat.S_IRUSR | stat.S_IXUSR)


def _rmtree(path: Path) -> None:
    """Delete one of sync's own staging or trash copies (a real folder: a link is never followed)."""
    kind = lkind(path)
    if kind == "missing":
        return
    if kind != "dir":
        raise NotRegularFile(path, "not a folder sync made")
    _make_writable(path)
    shutil.rmtree(path)  # unlinks links inside, never follows them


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy bytes only. copyfile creates each file afresh (mode 0o666 minus the umask), so a read-only
    bundle still installs writable copies without a chmod per file."""
    dst.mkdir(parents=True)
    made = {dst}
    for rel, kind in folder_entries(src).items():
        if kind != "file":  # load_bundle refuses these; a bundle changed since is not followed either
            raise NotRegularFile(src / rel)
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


def _no_link_below(root: Path, rel: Path) -> bool:
    """Whether making root/rel (its missing folders included) stays in real folders below root."""
    p = root
    for part in rel.parts[:-1]:
        p = p / part
        kind = lkind(p)
        if kind == "missing":
            return True
        if kind != "dir":
            return False
    return True


def _move_if_free(src: Path, dst: Path, root: Path) -> bool:
    """Rename src to dst unless dst is taken or lies through a link below root: nothing is overwritten."""
    if lkind(dst) != "missing" or not _no_link_below(root, dst.relative_to(root)):
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.rename(src, dst)  # renames the entry itself, a link included: nothing is read or followed
    return True


def _carry_foreign(old: Path, new: Path) -> None:
    """Keep what sync never installed (files the hash ignores, such as __pycache__/ or .DS_Store, and empty
    folders) when a pristine copy is replaced: moved across, never read, so a link or FIFO there is harmless.
    What cannot move (the name is taken in the new copy) stays in the old one, and _dispose keeps it."""
    ours = set(folder_entries(old))
    for root, dirs, files in os.walk(old):
        rel_root = Path(root).relative_to(old)
        walk = []
        for d in dirs:
            if d in IGNORED:
                _move_if_free(Path(root, d), new / rel_root / d, new)
            elif lkind(Path(root, d)) == "dir":
                walk.append(d)
        dirs[:] = walk
        for f in files:
            if (rel_root / f).as_posix() not in ours:
                _move_if_free(Path(root, f), new / rel_root / f, new)
        if not dirs and not files and lkind(new / rel_root) == "missing":
            (new / rel_root).mkdir(parents=True)


BACKUP_SUFFIX = ".bak"


def _defuse_skill_files(folder: Path) -> None:
    """Rename every SKILL.md under a backup to SKILL.md.bak: agents scan the whole target (hidden folders
    included) and would load a backup as a live skill of the same name. A linked SKILL.md is renamed too
    (the link itself); a linked folder is never entered. An existing SKILL.md.bak is not overwritten."""
    if lkind(folder) != "dir":
        return
    for root, dirs, files in os.walk(folder):
        if "SKILL.md" in files or ("SKILL.md" in dirs and lkind(Path(root, "SKILL.md")) == "link"):
            p = Path(root, "SKILL.md")
            bak, i = p.with_name(p.name + BACKUP_SUFFIX), 1
            while lkind(bak) != "missing":
                bak, i = p.with_name(f"{p.name}{BACKUP_SUFFIX}.{i}"), i + 1
            os.rename(p, bak)


# --------------------------------------------------------------------------- a SKILL.md's name
_KEY_RE = re.compile(r"""^ *(?:name|"name"|'name')[ \t]*:(?=[ \t]|$)(.*)$""")
_ESCAPES = {"0": "\0", "a": "\a", "b": "\b", "t": "\t", "\t": "\t", "n": "\n", "v": "\v", "f": "\f", "r": "\r",
            "e": "\x1b", " ": " ", '"': '"', "/": "/", "\\": "\\", "N": "\x85", "_": "\xa0", "L": "\u2028",
            "P": "\u2029"}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def front_matter_name(text: str) -> str | None:
    """The top-level ``name`` of a SKILL.md's YAML front matter, read the way a YAML parser reads the forms a
    name takes (stdlib only: sync runs before anything is installed): plain (a `` # comment`` dropped,
    more-indented lines folded in, or the value on the next line), 'single' or "double" quoted (escapes and
    line folding), and block scalars (``|`` literal, ``>`` folded, with chomping and indentation indicators),
    each after an optional ``!!str`` tag or ``&anchor``. Limits: the front matter must open with ``---`` and
    close with ``---`` or ``...`` within the text given (sync reads 16 KiB); an alias, a flow collection, another
    tag, or a form a YAML parser refuses reads as no name (None); a later ``name:`` wins, as in PyYAML; the
    result is stripped (agents compare names without surrounding blanks), and a number reads as its text."""
    lines = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[0].rstrip() != "---":
        return None
    end = next((i for i in range(1, len(lines)) if lines[i].rstrip() in ("---", "...")), None)
    if end is None:
        return None
    body = lines[1:end]
    content = [ln for ln in body if ln.strip() and not ln.lstrip().startswith("#")]
    if not content:
        return None
    base = _indent(content[0])  # the mapping's own indentation (usually 0)
    value = None
    for i, line in enumerate(body):
        m = _KEY_RE.match(line)
        if m and _indent(line) == base:
            more = []
            for nxt in body[i + 1:]:
                if nxt.strip() and _indent(nxt) <= base and not nxt.lstrip().startswith("#"):
                    break
                more.append(nxt)
            value = _scalar(m.group(1), more, base, body[i + 1:])
    return (value.strip() or None) if isinstance(value, str) else None


def _scalar(rest: str, more: list[str], base: int, tail: list[str], tagged: bool = False) -> str | None:
    """rest: the text after ``name:``; more: the lines below it indented deeper than the key; tail: all lines
    below it (a quoted scalar may go on at any indentation)."""
    rest = rest.strip()
    while rest[:1] in ("!", "&"):  # node properties: a tag (only a string one keeps a name) or an anchor
        tok, _, rest = rest.partition(" ")
        rest = rest.strip()
        if tok.startswith("!") and tok not in ("!", "!!str", "!<tag:yaml.org,2002:str>"):
            return None
        tagged = tagged or tok.startswith("!")
    if not rest or rest.startswith("#"):  # the value starts on the next line (or there is none: null)
        nxt = [i for i, ln in enumerate(more) if ln.strip() and not ln.lstrip().startswith("#")]
        if not nxt:
            return "" if tagged else None
        i = nxt[0]
        return _scalar(more[i], more[i + 1:], base, tail[i + 1:], tagged)  # more is the head of tail
    if rest[0] in "|>":
        return _block(rest, more, base)
    if rest[0] in "'\"":
        return _quoted(rest, tail, base)
    if rest[0] in "*[]{},#%@`" or rest[:2] in ("- ", "? ", ": ") or rest in ("-", "?", ":"):
        return None  # an alias, a flow collection, or not YAML
    return _plain(rest, more, tagged)


def _plain(rest: str, more: list[str], tagged: bool = False) -> str | None:
    def cut(s):  # a comment starts at a # after a blank
        m = re.search(r"[ \t]#", s)
        return (s[:m.start()], True) if m else (s, False)
    first, ended = cut(rest)
    out, blanks = first.strip(), 0
    if re.search(r":(?:[ \t]|$)", out):
        return None  # "a: b" as a value is an error in YAML
    for line in more:
        s = line.strip()
        if ended or s.startswith("#"):
            if s and not s.startswith("#"):
                return None  # more text after a comment ended the scalar
            ended = ended or bool(s)
            continue
        if not s:
            blanks += 1
            continue
        s, ended = cut(s)
        s = s.strip()
        if re.search(r":(?:[ \t]|$)", s):
            return None
        out += ("\n" * blanks if blanks else " ") + s  # line folding: one break is a space
        blanks = 0
    return None if out in ("", "~", "null", "Null", "NULL") and not tagged else out  # !!str ~ is "~"


def _quoted(rest: str, tail: list[str], base: int) -> str | None:
    q, text = rest[0], "\n".join([rest[1:]] + tail)
    out: list[tuple[str, bool]] = []  # (text, escaped): escaped blanks survive line folding
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == q and q == "'" and text[i + 1:i + 2] == "'":
            out.append(("'", True))
            i += 2
        elif ch == q:
            line_rest, _, after = text[i + 1:].partition("\n")
            if not re.match(r"[ \t]*(#.*)?$", line_rest):
                return None  # text after the closing quote
            for line in after.split("\n"):
                if line.strip() and _indent(line) <= base:
                    break  # the next key
                if line.strip() and not line.strip().startswith("#"):
                    return None
            return "".join(t for t, _ in out)
        elif ch == "\\" and q == '"':
            c = text[i + 1:i + 2]
            if c in _ESCAPES:
                out.append((_ESCAPES[c], True))
                i += 2
            elif c in _HEX_ESCAPES:
                digits = text[i + 2:i + 2 + _HEX_ESCAPES[c]]
                if len(digits) != _HEX_ESCAPES[c] or not all(d in "0123456789abcdefABCDEF" for d in digits) \
                        or int(digits, 16) > 0x10FFFF:
                    return None
                out.append((chr(int(digits, 16)), True))
                i += 2 + len(digits)
            elif c == "\n":  # an escaped line break joins the lines without a space
                i += 2
                while i < n and text[i] in " \t":
                    i += 1
            else:
                return None
        elif ch == "\n":  # line folding: blanks around the break go; one break is a space, more are breaks
            while out and out[-1][0] in " \t" and not out[-1][1]:
                out.pop()
            i, breaks = i + 1, 0
            while True:
                j = i
                while j < n and text[j] in " \t":
                    j += 1
                if j < n and text[j] == "\n":
                    breaks, i = breaks + 1, j + 1
                    continue
                i = j
                break
            out.append(("\n" * breaks if breaks else " ", True))
        else:
            out.append((ch, False))
            i += 1
    return None  # no closing quote


def _block(rest: str, more: list[str], base: int) -> str | None:
    m = re.match(r"^([|>])(?:([1-9])?([+-])?|([+-])([1-9]))(?:[ \t]+#.*)?[ \t]*$", rest)
    if not m:
        return None
    style, explicit = m.group(1), m.group(2) or m.group(5)
    filled = [ln for ln in more if ln.strip() and (_indent(ln) > base or not ln.lstrip().startswith("#"))]
    if not filled:
        return ""
    if explicit:
        indent = base + int(explicit)
    else:  # the first non-empty line's, or longer blank lines before it (YAML's auto-detection)
        head = more[:more.index(filled[0])]
        indent = max([_indent(filled[0])] + [len(ln) for ln in head if not ln.strip(" ")])
    lines, ended = [], False
    for line in more:
        if ended or (line.strip() and _indent(line) < indent):
            if line.strip() and not line.lstrip().startswith("#"):
                return None  # less indented than the block, more than the key: a YAML parser refuses it
            ended = True  # a less indented comment ends the block
        elif not line.strip():
            lines.append("")
        else:
            lines.append(line[indent:])
    while lines and not lines[-1]:
        lines.pop()  # trailing breaks are all chomping decides, and the name is compared stripped
    if style == "|":
        return "\n".join(lines)
    out, blanks, prev_more = None, 0, False
    for line in lines:  # folding: a break between two plain lines is a space; around more-indented ones it stays
        if not line:
            blanks += 1
            continue
        more_indented = line[:1] in " \t"
        if out is None:
            out = "\n" * blanks + line
        elif prev_more or more_indented:
            out += "\n" + "\n" * blanks + line
        else:
            out += ("\n" * blanks if blanks else " ") + line
        blanks, prev_more = 0, more_indented
    return out or ""


def scan_skills(target: Path) -> dict[str, list[Path]]:
    """Every skill folder below ``target`` by name (frontmatter name and folder name), as agents find them:
    any SKILL.md at any depth; our own .prefpilot folder holds none."""
    found: dict[str, list[Path]] = {}
    if lkind(target) != "dir":
        return found
    for root, dirs, files in os.walk(target):  # never into a linked folder
        dirs[:] = [d for d in dirs if not (Path(root) == target and d == STATE_DIR)]
        if "SKILL.md" in files:
            folder = Path(root)
            names = {folder.name}
            with contextlib.suppress(OSError):  # a linked, FIFO or device SKILL.md is not read: its folder name
                head = read_regular(folder / "SKILL.md", FRONT_MATTER_BYTES)[:FRONT_MATTER_BYTES]
                name = front_matter_name(head.decode("utf-8", errors="replace"))
                if name:
                    names.add(name)
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
    lock = state_dir / "lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0), 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device there locks nothing
            raise UsageError(f"{lock} is not a regular file: remove it and run sync.py again (nothing was written)")
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            fcntl = None
        deadline, said = time.monotonic() + timeout, False
        while True:
            try:
                if fcntl:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                else:  # pragma: no cover
                    import msvcrt
                    msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    raise UsageError(f"another sync has held {lock} for {timeout:g} s; if none is "
                                     "running (a stopped process keeps the lock), end it and run sync.py again")
                if not said:
                    print(f"sync.py: waiting for another sync on {state_dir.parent} (gives up after {timeout:g} s)",
                          file=sys.stderr)
                    said = True
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)


def plain_rel(rel) -> Path:
    """An install path from the bundle or the state file: relative, never climbing, not hidden at the top."""
    if not isinstance(rel, str) or not rel or "\0" in rel or rel.startswith(".") or Path(rel).is_absolute() \
            or ".." in Path(rel).parts:
        raise ValueError(f"install path {str(rel)[:200]!r} is not a plain relative path")
    return Path(rel)


def _file_key_ok(rel) -> bool:
    """A key of a state entry's 'files' map (a file inside one skill: dotfiles allowed, nothing climbing)."""
    return isinstance(rel, str) and bool(rel) and "\0" not in rel and not Path(rel).is_absolute() \
        and ".." not in Path(rel).parts


def check_state(state, path: Path) -> None:
    """Raise ValueError naming the first thing in a state file that sync would not have written. Types only:
    install paths are checked where they are used (dest_for), so one forged path fails one skill."""
    if not isinstance(state, dict):
        raise ValueError("not a state object")
    version = state.get("schema_version", SCHEMA_VERSION)
    if type(version) is not int:
        raise ValueError("schema_version is not a number")
    if version > SCHEMA_VERSION:
        raise UsageError(f"{path} was written by a newer sync.py (state schema {version}, this one reads "
                         f"{SCHEMA_VERSION}): update prefpilot (nothing was changed)")
    if not isinstance(state.get("skills"), dict):
        raise ValueError("'skills' is not an object")
    state.setdefault("pending", {})
    if not isinstance(state["pending"], dict):
        raise ValueError("pending is not an object")
    for name, entry in state["skills"].items():
        if not (NAME_RE.match(name) and isinstance(entry, dict)
                and isinstance(entry.get("origin"), str) and isinstance(entry.get("path"), str)):
            raise ValueError(f"bad entry {name[:64]!r}")
        if not isinstance(entry.get("version", ""), str):
            raise ValueError(f"skill {name}: version is not a string")
        files = entry.get("files", {})
        if not (isinstance(files, dict) and all(_file_key_ok(k) and isinstance(v, str) for k, v in files.items())):
            raise ValueError(f"skill {name}: 'files' is not a map of relative file paths to hashes")


def _sha_or_none(path: Path) -> str | None:
    try:
        return file_sha(path)
    except OSError:
        return None


def _text_lines(path: Path) -> list[str] | None:
    """A file's lines for --diff (None when it is over MAX_DIFF_BYTES)."""
    data = read_regular(path, MAX_DIFF_BYTES)
    return None if len(data) > MAX_DIFF_BYTES else data.decode("utf-8", errors="replace").splitlines(True)


class LeftAlone(Exception):
    """A skill folder that sync was about to move, back up, delete or write into is a symbolic link (I3)."""


# --------------------------------------------------------------------------- the syncer
class Syncer:
    def __init__(self, bundle_dir: Path, target: Path, layout: str, dry_run: bool,
                 lock_timeout: float = LOCK_TIMEOUT_S, only: list[str] | None = None, replace: str | None = None):
        self.lock_timeout = lock_timeout
        self.only = set(only) if only else None    # --only: sync just these skills
        self.replace = replace                     # --replace: back up another skill of this name, install ours
        self.others: dict[str, list[Path]] = {}    # skills below the target by name (for name collisions)
        self.ours: set[Path] = set()               # folders we track or install into (--replace keeps them)
        self.bundle_dir = bundle_dir
        self.skills_root = bundle_dir / "skills"
        self.target = target
        self.layout = layout  # "tree" keeps the bundle's folders (hermes); "flat" is <name>/ (claude)
        self.dry_run = dry_run
        self.state_dir = target / STATE_DIR
        self.result = {k: [] for k in RESULT_KEYS}
        self.messages: dict[str, str] = {}
        self.backups: list[str] = []
        self.strays: list[str] = []
        self.dirty = False  # state changes not yet saved (fresh installs are saved once, at the end)
        self.del_tag = f"prefpilot-del-{uuid.uuid4().hex[:8]}"  # names a file while _dispose checks it
        self._real_target: Path | None = None

    # -- paths ---------------------------------------------------------------
    def dest_for(self, rel: str) -> Path:
        """Resolve an install path and refuse anything that leaves the target (I3)."""
        dest = self.target / plain_rel(rel)
        # Every existing parent must stay inside the target once symlinks are resolved.
        if not self._inside(dest.parent):
            raise ValueError(f"install path {rel!r} leaves the target through a symlink")
        return dest

    def _inside(self, path: Path) -> bool:
        """Whether path, its links resolved, is the target or below it."""
        if self._real_target is None or lkind(self.target) == "missing":
            self._real_target = self.target.resolve()
        parent = path.resolve()
        return parent == self._real_target or self._real_target in parent.parents

    def real_folder(self, path: Path) -> Path:
        """The one link policy (I3), asked before a skill folder is moved, renamed, backed up, deleted or
        written into: it must not be a symbolic link, and its parent must lie inside the target. A symlinked
        skill folder is the user's arrangement: reported and left alone, never followed. (Walks below a real
        folder never follow links either: see the file ops above.)"""
        if lkind(path) == "link":
            raise LeftAlone(f"symlinked folder left alone: {path} is a symbolic link, and sync never follows or "
                            "writes through one")
        if not self._inside(path.parent):
            raise LeftAlone(f"{path} lies outside the target through a symbolic link: left alone")
        return path

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
    def load_state(self, read_only: bool = False) -> dict:
        """The state file, checked (a regular file of at most MAX_STATE_BYTES, JSON of the shape sync writes).
        A damaged one cannot tell pristine from edited copies: a sync sets it aside and starts from an empty one,
        so every existing folder counts as the user's and is kept (I1); a read-only command (--list, --diff)
        reports it and changes nothing."""
        path = self.state_dir / STATE_FILE
        empty = {"schema_version": SCHEMA_VERSION, "skills": {}, "pending": {}}
        if lkind(path) == "missing":
            return empty
        try:
            data = read_regular(path, MAX_STATE_BYTES)
            if len(data) > MAX_STATE_BYTES:
                raise ValueError(f"larger than {MAX_STATE_BYTES >> 20} MiB")
            state = json.loads(data.decode("utf-8"))
            check_state(state, path)
            return state
        except (OSError, ValueError, RecursionError) as exc:
            reason = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc))[:200]
            if read_only:
                raise UsageError(f"{path} is damaged ({reason}); nothing was changed. A sync sets it aside and "
                                 "keeps every installed skill as yours")
            if not self.dry_run:
                keep = self.state_dir / f"state.corrupt-{int(time.time())}-{uuid.uuid4().hex[:6]}.json"
                with contextlib.suppress(OSError):
                    os.replace(path, keep)
            self.result["errors"].append(STATE_DIR)
            self._say(STATE_DIR, f"state file was unreadable ({reason}); kept aside, existing skills treated as "
                                 "the user's")
            return empty

    def save_state(self, state: dict) -> None:
        if self.dry_run:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / f"state.tmp-{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with open(fd, "w", encoding="utf-8") as fh:
            json.dump(state, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_dir / STATE_FILE)
        _fsync_dir(self.state_dir)

    # -- crash recovery (I4) ----------------------------------------------------
    def recover(self, state: dict) -> None:
        """Finish or roll back operations a killed sync left half done. Only real folders named by a journal
        token are used or deleted: anything else in staging/ or trash/ (a link, a file, a folder of another
        name) is left alone and reported, so it can neither lead out of the target nor block a later sync."""
        for name, op in list(state["pending"].items()):
            try:
                token = op["token"]
                if not (isinstance(token, str) and TOKEN_RE.match(token) and op.get("kind") in ("install", "remove")
                        and isinstance(op.get("new") or "", str) and isinstance(op.get("version", ""), str)):
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
            present = lkind(dest) != "missing"
            record = {"origin": new, "path": op["path"], "version": op.get("version", "")}
            if op.get("kind") == "remove":
                if not present:
                    state["skills"].pop(name, None)  # the removal got as far as the rename
            elif present:
                if new and folder_sha(dest) == new:
                    state["skills"][name] = record  # swapped in, state not yet written
            elif lkind(staging) == "dir" and folder_sha(staging) == new:
                os.rename(staging, dest)  # the swap was half done: finish it
                state["skills"][name] = record
            elif lkind(trash) == "dir":
                os.rename(trash, dest)  # the copy was incomplete: put the old pristine copy back
            else:
                # We moved the copy away (a --reset backup) before the kill: forget the entry so
                # the bundled skill is installed again rather than read as a user deletion.
                state["skills"].pop(name, None)
            self._drop_own(staging, name)
            self._drop_own(trash, name, pristine=(op.get("old"), new))
            state["pending"].pop(name)
        # Leftovers no journal entry points at (killed before the journal write) are ours to drop.
        for sub in ("staging", "trash"):
            d = self.state_dir / sub
            if lkind(d) == "dir":
                for child in sorted(d.iterdir()):
                    if TOKEN_RE.match(child.name) and lkind(child) == "dir":
                        _rmtree(child)
                    else:
                        self.strays.append(str(child.relative_to(self.target)))
        for tmp in sorted(self.state_dir.glob("state.tmp-*")):
            if TOKEN_RE.match(tmp.name[len("state.tmp-"):]) and lkind(tmp) == "file":
                tmp.unlink()
            else:
                self.strays.append(str(tmp.relative_to(self.target)))
        if self.strays:
            self._say(STATE_DIR, f"left alone {', '.join(self.strays[:5])}{' ...' if len(self.strays) > 5 else ''}: "
                                 "not made by sync (a link, a file or another name); remove it if it is not yours")
        _defuse_skill_files(self.state_dir / "backups")
        self.save_state(state)

    def _drop_own(self, path: Path, name: str, pristine: tuple = ()) -> None:
        """Delete a journalled staging or trash folder. Not a real folder: left alone (reported). A trash copy
        that is not the pristine one we moved there (an edit that could not be put back) goes to backups."""
        kind = lkind(path)
        if kind == "missing":
            return
        if kind != "dir":
            self.strays.append(str(path.relative_to(self.target)))
        elif pristine and folder_sha(path) not in pristine:
            self._backup_whole(path, name)
        else:
            _rmtree(path)

    # -- atomic operations ---------------------------------------------------------
    def _begin(self, state, name, kind, rel, new=None, old=None, version=""):
        token = uuid.uuid4().hex
        state["pending"][name] = {"kind": kind, "path": rel, "new": new, "old": old,
                                  "token": token, "version": version}
        self.save_state(state)
        return self.state_dir / "staging" / token, self.state_dir / "trash" / token

    def _backup_dir(self, name: str) -> Path:
        bdir = self.state_dir / "backups" / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        bdir.parent.mkdir(parents=True, exist_ok=True)
        return bdir

    def _backup_whole(self, folder: Path, name: str) -> None:
        """I5: move a folder into backups (one rename: a link inside is moved, never followed), defused."""
        bdir = self._backup_dir(name)
        os.rename(folder, bdir)
        _defuse_skill_files(bdir)
        self.backups.append(str(bdir))

    def install(self, state, skill, rel, backup_of_user: bool = False, expect: str | None = None) -> None:
        """Copy the bundled skill beside the destination, then swap it in (I4). ``expect``: the hash the copy
        being replaced had when the update was decided; it is checked again once the copy is moved aside (I1)."""
        src = self.skills_root / skill["path"]
        dest = self.real_folder(self.dest_for(rel))
        # per-file origin hashes: `--diff` tells the files the user changed from those the bundle changed
        record = {"origin": skill["sha256"], "path": rel, "version": skill["version"], "files": skill.get("files", {})}
        if lkind(dest) == "missing":
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
        known = None
        if backup_of_user:
            self._backup_whole(dest, skill["name"])  # I5: the user's copy is moved, never deleted
        else:
            _make_writable(dest)
            os.rename(dest, trash)
            try:
                sha, known = folder_hashes(trash)
            except OSError:
                sha = None
            if sha != expect:
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
        if known is not None:
            self._dispose(trash, known, skill["name"], dest)

    def remove(self, state, name, entry) -> None:
        dest = self.real_folder(self.dest_for(entry["path"]))
        _, trash = self._begin(state, name, "remove", entry["path"], old=entry["origin"])
        trash.parent.mkdir(parents=True, exist_ok=True)
        _make_writable(dest)
        os.rename(dest, trash)
        try:
            sha, known = folder_hashes(trash)
        except OSError:
            sha = None
        if sha != entry["origin"]:  # I1: edited since the check: put back as it is
            os.rename(trash, dest)
            state["pending"].pop(name)
            self.save_state(state)
            raise EditedDuringSync(f"{dest} changed while it was being removed; kept as is")
        state["skills"].pop(name)
        state["pending"].pop(name)
        self.save_state(state)
        self._dispose(trash, known, name, dest)

    def _dispose(self, trash: Path, known: dict, name: str, home: Path) -> None:
        """Delete the old copy an update or a removal moved aside without losing a write that landed in it after
        it was checked (a process whose working folder is the skill goes on writing into this folder after the
        swap). Only files whose bytes still equal the checked copy are unlinked, each renamed first so that a
        writer opening that name from then on makes a new file; folders go with rmdir, which fails once anything
        new is in them; and what remains is put back under ``home`` (the new copy, or the removed folder's place)
        where its name is free, else kept whole in backups. Still lost: bytes written into one of our own files
        through a descriptor opened before our last hash of that file, in the instant before its unlink."""
        for root, dirs, files in os.walk(trash, topdown=False):
            for f in files:
                p = Path(root, f)
                digest = known.get(p.relative_to(trash).as_posix())
                if digest is None or lkind(p) != "file":
                    continue
                doomed = p.with_name(f"{f}.{self.del_tag}")
                os.rename(p, doomed)
                if _sha_or_none(doomed) == digest:
                    os.unlink(doomed)
                else:  # written since the check: back under its name, never over a newer file of that name
                    with contextlib.suppress(OSError):
                        os.link(doomed, p)
                        os.unlink(doomed)
            with contextlib.suppress(OSError):
                os.rmdir(root)
        if lkind(trash) == "missing":
            return
        # Something was written into the old copy after it was checked: the user's, so it is kept.
        if lkind(home) == "missing":
            os.rename(trash, home)  # a removal: the folder goes back holding just those files
            self._say(name, f"files written into {home} while it was being removed were kept there")
            return
        kept = []
        for root, dirs, files in os.walk(trash, topdown=False):
            for f in files + [d for d in dirs if lkind(Path(root, d)) != "dir"]:
                rel = Path(root, f).relative_to(trash)
                if _move_if_free(Path(root, f), home / rel, home):
                    kept.append(rel.as_posix())
            with contextlib.suppress(OSError):
                os.rmdir(root)
        if kept:
            self._say(name, f"{', '.join(kept[:5])}{' ...' if len(kept) > 5 else ''}: written into the old copy "
                            f"during the update, kept in {home}")
        if lkind(trash) != "missing":  # a name the new copy also has (or a writer still at it): kept whole
            self._backup_whole(trash, name)
            self._say(name, "files written into the old copy during the update were kept in a backup")

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
            if self.replace:  # the folders --replace must keep where they are
                rels = [e["path"] for e in state["skills"].values()] + [self.install_rel(s) for s in bundled.values()]
                for rel in rels:
                    with contextlib.suppress(ValueError):
                        self.ours.add(self.dest_for(rel))
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
        state = self.load_state(read_only=True)
        bundled = {s["name"]: s for s in manifest["skills"]}
        rows = []
        for name in sorted(set(bundled) | set(state["skills"])):
            b, e = bundled.get(name), state["skills"].get(name)
            row = {"name": name, "bundle_version": b["version"] if b else None,
                   "installed_version": e.get("version") if e else None, "path": e["path"] if e else None}
            if e is None:
                row["status"] = "not installed"
            else:
                try:
                    dest = self.dest_for(e["path"])
                    kind = lkind(dest)
                    sha = folder_sha(dest)
                    row["status"] = ("symlinked, left alone" if kind == "link" else "deleted" if kind == "missing"
                                     else "orphan" if b is None else "pristine" if sha == e["origin"] else "edited")
                    if row["status"] == "pristine" and b and b["sha256"] != e["origin"]:
                        row["status"] = "pristine, update available"
                except (OSError, ValueError) as exc:  # a forged path, an unreadable copy: said, per skill
                    row["status"], row["error"] = "error", str(exc)[:300]
            rows.append(row)
        return rows

    def uninstall(self, manifest: dict, names: list[str]) -> dict:
        """Remove our pristine copies (all, or ``names``); edited copies stay and are reported (I1)."""
        self.check_own_dirs()
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
        state = self.load_state(read_only=True)
        bundled = {s["name"]: s for s in manifest["skills"]}
        if name not in bundled:
            raise UsageError(f"--diff {name}: no such skill in the bundle (have: {', '.join(sorted(bundled))})")
        entry = state["skills"].get(name)
        try:
            dest = self.dest_for(entry["path"] if entry else self.install_rel(bundled[name]))
        except ValueError as exc:
            raise UsageError(f"--diff {name}: the state file's {exc} (nothing was changed)")
        if lkind(dest) == "link":
            raise UsageError(f"--diff {name}: {dest} is a symbolic link; sync leaves symlinked folders alone and "
                             "does not read through them")
        if lkind(dest) != "dir":
            raise UsageError(f"--diff {name}: no installed copy at {dest}")
        src = self.skills_root / bundled[name]["path"]
        origin = (entry or {}).get("files", {})
        mine, theirs = folder_entries(dest), folder_entries(src)
        out = []
        for rel in sorted(set(mine) | set(theirs)):
            if mine.get(rel, "file") != "file":
                out.append(f"# {rel}: not a regular file ({mine[rel]}), not read\n")
                continue
            a = _text_lines(src / rel) if rel in theirs else []
            b = _text_lines(dest / rel) if rel in mine else []
            if a is None or b is None:
                out.append(f"# {rel}: larger than {MAX_DIFF_BYTES >> 20} MiB, not shown\n")
                continue
            if a == b:
                continue
            who = ("you changed it" if rel in mine and origin.get(rel) and file_sha(dest / rel) != origin[rel]
                   else "you added it" if rel not in origin and rel in mine and rel not in theirs
                   else "the bundle changed it" if origin.get(rel) and rel in theirs
                   and file_sha(src / rel) != origin[rel] else "changed")
            out.append(f"# {rel}: {who}\n")
            out += difflib.unified_diff(a, b, f"bundle/{rel}", f"yours/{rel}")
        return "".join(out) or f"{name}: your copy equals the bundled version\n"

    def _say(self, name, message) -> None:
        """Add a note for a skill (or STATE_DIR): notes about one name add up, none is overwritten."""
        old = self.messages.get(name)
        if old != message:
            self.messages[name] = f"{old}; {message}" if old else message

    def _note(self, key, name, message=None):
        self.result[key].append(name)
        if message:
            self._say(name, message)

    @staticmethod
    def _odd_entries(folder: Path) -> str | None:
        odd = [rel for rel, kind in folder_entries(folder).items() if kind != "file"]
        return (f"holds {', '.join(odd[:3])}{' ...' if len(odd) > 3 else ''} (a link, FIFO or device: never "
                "read), so it counts as your edit") if odd else None

    def _one(self, state, skill, reset: bool) -> None:
        name = skill["name"]
        asked = reset or self.replace == name
        entry = None
        try:
            rel = self.install_rel(skill)
            dest = self.dest_for(rel)
            entry = state["skills"].get(name)
            if entry and entry["path"] != rel:
                entry = self._moved(state, skill, entry, rel)
                if entry is None:
                    return
            if lkind(dest) == "link":
                # A symlinked skill folder is the user's arrangement: left alone, whatever the flags (I3).
                self.real_folder(dest)
            exists = lkind(dest) != "missing"
            # Another skill of this name elsewhere in the target (an agent's own, say hermes'
            # mlops/training/trl-fine-tuning) would make the name ambiguous: not installed, unless --replace.
            elsewhere = [p for p in self.others.get(name, []) if p.resolve() != dest.resolve()
                         and not (entry and p.resolve() == self.dest_for(entry["path"]).resolve())]
            if self.replace == name and (elsewhere or (exists and entry is None)):
                for p in elsewhere + ([dest] if exists and entry is None else []):
                    self._back_up(p, name)
                elsewhere = []
                if not self.dry_run:
                    exists = lkind(dest) != "missing"  # gone, or kept because it holds other skills
                elif entry is None:
                    exists = False  # a dry run reports what --replace would do
            if elsewhere and entry is None:
                where = ", ".join(str(p) for p in elsewhere)
                self._note("collisions", name, f"another skill named {name} is at {where}; installing ours would "
                                               f"make the name ambiguous. `--replace {name}` backs that one up "
                                               "and installs prefpilot's")
                return
            if reset:
                current = folder_sha(dest) if exists else None
                if not self.dry_run:
                    self.install(state, skill, rel, backup_of_user=exists and current != skill["sha256"],
                                 expect=current)
                self._note("updated" if exists else "copied", name)
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
                self._note("user_modified", name, self._odd_entries(dest))  # I1: kept as the user left it
            elif current == skill["sha256"]:
                self._note("unchanged", name)
            else:
                if not self.dry_run:
                    self.install(state, skill, rel, expect=current)
                self._note("updated", name)
        except LeftAlone as exc:
            # asked to --reset/--replace it: not done, so an error; otherwise the usual report of a link
            self._note("errors" if asked else "user_modified" if entry else "collisions", name, str(exc))
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
        if lkind(old) == "missing":
            # I2: the user deleted it; it stays deleted at its new path too
            if not self.dry_run:
                state["skills"][name] = {**entry, "path": rel}
                self.dirty = True
            self._note("user_deleted", name)
            return None
        if lkind(old) == "link" or folder_sha(old) != entry["origin"]:
            self._note("user_modified", name, f"moved in the bundle to {rel}; your edited copy stays at "
                                              f"{entry['path']} (sync.py --reset {name} installs the new one)")
            return None
        if lkind(new) != "missing":
            self._note("collisions", name, f"moved in the bundle to {rel}, which is taken; left at {entry['path']}")
            return None
        if not self.dry_run:
            self.real_folder(old)
            self.real_folder(new)
            new.parent.mkdir(parents=True, exist_ok=True)
            os.rename(old, new)  # one rename: never half moved
            with contextlib.suppress(OSError):
                old.parent.rmdir()  # a category folder we emptied
            entry = {**entry, "path": rel}
            state["skills"][name] = entry
            self.save_state(state)
        else:
            entry = {**entry, "path": rel}
        self._say(name, f"moved from {old.relative_to(self.target)} to {rel}")
        return entry

    def _back_up(self, folder: Path, name: str) -> None:
        """--replace: move another skill of our name into .prefpilot/backups (defused), never delete it. Only
        that skill's own files go: a folder that also holds other skills, ours or the user's (a category whose
        own SKILL.md has our name, say mlops/SKILL.md beside mlops/simpo/), keeps them where they are."""
        self.real_folder(folder)
        if self.dry_run:
            self.backups.append(f"(would back up {folder})")
            return
        held = {c for c in os.listdir(folder) if lkind(folder / c) == "dir" and (
            any(folder / c == o or folder / c in o.parents for o in self.ours)
            or any("SKILL.md" in files for _, _, files in os.walk(folder / c)))}
        if not held:
            self._backup_whole(folder, name)
            return
        bdir = self._backup_dir(name)
        bdir.mkdir()
        for child in sorted(set(os.listdir(folder)) - held):
            os.rename(folder / child, bdir / child)  # each entry itself: a link is moved, never followed
        _defuse_skill_files(bdir)
        self.backups.append(str(bdir))
        self._say(name, f"backed up the skill in {folder} (its own files); the other skills in it stay")

    def _gone(self, state, name) -> None:
        """A skill we installed that the bundle no longer ships."""
        self._retire(state, name, "kept_orphans", None)

    def _retire(self, state, name, edited_key: str, edited_note: str | None, gone_note: str | None = None) -> None:
        """Stop tracking a skill: our pristine copy is removed; an edited one stays, untracked (I1); a copy the
        user already deleted is just forgotten. Forgetting touches no file, so it is saved once, at the end."""
        entry = state["skills"][name]
        try:
            dest = self.dest_for(entry["path"])
            if lkind(dest) == "missing":
                if not self.dry_run:
                    state["skills"].pop(name)
                    self.dirty = True
                if gone_note:
                    self._note("removed", name, gone_note)
            elif lkind(dest) != "link" and folder_sha(dest) == entry["origin"]:
                if not self.dry_run:
                    self.remove(state, name, entry)
                self._note("removed", name)
            else:
                if not self.dry_run:
                    state["skills"].pop(name)
                    self.dirty = True
                self._note(edited_key, name, edited_note.format(dest=dest) if edited_note else None)
        except EditedDuringSync as exc:  # edited in the instant before the removal: kept, untracked
            state["skills"].pop(name, None)
            self.dirty = True
            self._note(edited_key, name, str(exc))
        except (OSError, ValueError, LeftAlone) as exc:
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


# What each mode reads besides the target flags; a flag it would ignore is refused, naming both.
MODE_FLAGS = {
    "sync": {"--only", "--reset", "--replace", "--dry-run", "--json", "--lock-timeout"},
    "--list": {"--json", "--dry-run"},            # read-only anyway: --dry-run is redundant, not ignored
    "--diff": {"--json", "--dry-run"},
    "--uninstall": {"--dry-run", "--json", "--lock-timeout"},
    "--write-manifest": set(),                    # a developer command on the bundle: no target at all
}
TARGET_FLAGS = {"--target", "--agent", "--project"}


def check_flags(args) -> None:
    """Refuse an empty value and any flag the chosen mode would silently ignore (exit 2, nothing written).
    --agent with --target is a combination, not a conflict: the agent's layout, in that folder."""
    for flag, value, what in (("--target", args.target, "the skills folder to install into"),
                              ("--project", args.project, "the project folder"),
                              ("--diff", args.diff, "the skill to compare"), ("--reset", args.reset, "a skill name"),
                              ("--replace", args.replace, "a skill name")):
        if value is not None and not value.strip():
            raise UsageError(f"{flag} is empty: give {what}")
    modes = [flag for flag, on in (("--list", args.list), ("--diff", args.diff is not None),
                                   ("--uninstall", args.uninstall is not None),
                                   ("--write-manifest", args.write_manifest)) if on]
    if len(modes) > 1:
        raise UsageError(f"{' and '.join(modes)} cannot be combined: give one of them")
    mode = modes[0] if modes else "sync"
    given = [flag for flag, on in (("--target", args.target is not None), ("--agent", args.agent is not None),
                                   ("--project", args.project is not None), ("--only", args.only is not None),
                                   ("--reset", args.reset is not None), ("--replace", args.replace is not None),
                                   ("--dry-run", args.dry_run), ("--json", args.json),
                                   ("--lock-timeout", args.lock_timeout is not None)) if on]
    allowed = MODE_FLAGS[mode] | (TARGET_FLAGS if mode != "--write-manifest" else set())
    ignored = [flag for flag in given if flag not in allowed]
    if ignored:
        what = "a sync" if mode == "sync" else mode
        raise UsageError(f"{what} does not take {', '.join(ignored)} (it would be ignored): run them separately")
    if args.target is not None and args.project is not None:
        raise UsageError("--target and --project both name the folder to install into: give one")
    for flag, name in (("--reset", args.reset), ("--replace", args.replace)):
        if name and args.only is not None and name not in args.only:
            raise UsageError(f"{flag} {name} is outside --only {' '.join(args.only)}, so it would be ignored: "
                             f"add {name} to --only")


def seconds(text: str) -> float:
    """--lock-timeout: a finite number of seconds, 0 or more (nan or inf would wait forever)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a finite number of seconds, 0 or more")
    return value


def resolve_target(args) -> tuple[Path, str]:
    if args.project is not None:
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
    ap.add_argument("--lock-timeout", type=seconds, metavar="SECONDS",
                    help=f"how long to wait for another sync on the same target (default {LOCK_TIMEOUT_S:g})")
    ap.add_argument("--bundle", default=str(HERE), help=argparse.SUPPRESS)
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    bundle_dir = Path(args.bundle)
    try:
        check_flags(args)
        if args.write_manifest:
            manifest = build_manifest(bundle_dir / "skills")
            text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
            (bundle_dir / "manifest.json").write_text(text, encoding="utf-8")
            print(f"wrote {bundle_dir / 'manifest.json'} ({len(manifest['skills'])} skills)")
            return 0
        manifest = load_bundle(bundle_dir)
        target, layout = resolve_target(args)
        syncer = Syncer(bundle_dir, target, layout, args.dry_run,
                        LOCK_TIMEOUT_S if args.lock_timeout is None else args.lock_timeout, only=args.only,
                        replace=args.replace)
        if args.list:
            rows = syncer.listing(manifest)
            print(json.dumps(rows, indent=1) if args.json else "\n".join(
                f"{r['name']:28} {r['status']:28} installed {r['installed_version'] or '-':8} bundle "
                f"{r['bundle_version'] or '-'}" + (f"\n  error: {r['error']}" if r.get("error") else "")
                for r in rows) or "no skills")
            return 1 if any(r.get("error") for r in rows) else 0
        if args.diff is not None:
            text = syncer.diff(manifest, args.diff)
            print(json.dumps({"name": args.diff, "diff": text}) if args.json else text, end="\n" if args.json else "")
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
