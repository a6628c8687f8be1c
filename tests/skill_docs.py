"""Parse the executable parts of the skills: formula blocks, worked examples, config snippets."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKILLS = ROOT / "skills"
FENCE = re.compile(r"(?:<!--\s*expect-error:\s*(?P<expect>[\w_]+)\s*-->\s*\n)?```(?P<lang>[\w-]+)(?: (?P<tag>[\w_-]+))?\n(?P<body>.*?)\n```", re.S)


def markdown_files():
    return sorted(SKILLS.rglob("*.md"))


def blocks(lang: str):
    """(file, tag, body, expected_error_code) for every fenced block of a language in the skills."""
    out = []
    for md in markdown_files():
        for m in FENCE.finditer(md.read_text(encoding="utf-8")):
            if m.group("lang") == lang:
                out.append((md.relative_to(ROOT).as_posix(), m.group("tag"), m.group("body"), m.group("expect")))
    return out
