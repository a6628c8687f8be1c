"""Find every block of metrics in whatever holds a log, and pick the one that is the training log.

Users hand over what they have: a saved notebook, a model card with five tables, an issue paste, a W&B
summary, mlx_lm's ``Iter N:`` lines. Instead of one reader per file type, each container is cut into
candidate blocks (every Markdown/HTML/text table, the console lines, the ``name value`` summary lines,
a card's results list), each block is scored by the preference metrics it carries (names go through the
one alias table, :func:`parse.canonical`), and the best is used. The report says which block was used,
where it sat and what was skipped. A new log shape is a pattern here or an alias in parse.py, not a new
branch in the caller.

Hints for telling the method apart (trainer classes in a notebook's code, ``loss_type=``, a card's tags)
are collected on the way; :func:`prefpilot.diagnosis.detect_method` weighs them.
"""
from __future__ import annotations

import ast
import csv
import json
import math
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

from ..errors import PrefpilotError
from .parse import canonical, to_float

# How much a metric tells about a preference run: rewards/log-probs/odds identify one, a loss is generic.
_WEIGHT = {"loss": 2, "grad_norm": 1, "learning_rate": 1, "entropy": 1, "logits/chosen": 1, "logits/rejected": 1,
           "epoch": 0, "step": 0}
_PREF_WEIGHT = 3


@dataclass
class Block:
    kind: str                       # the format, as the report names it ("notebook HTML table", "console log", ...)
    where: str                      # where it sat ("cell 14, text/html", "table 3 under '## Training results'")
    rows: list = field(default_factory=list)    # raw dicts, keys as written
    notes: list = field(default_factory=list)
    info: dict = field(default_factory=dict)    # reader details (ignored lines, hyperparameters)

    def metrics(self) -> set:
        """Canonical names of the metrics the block carries (a sample of rows: blocks have one shape)."""
        rows = self.rows if len(self.rows) <= 400 else self.rows[:200] + self.rows[-200:]
        names = set()
        for r in rows:
            if isinstance(r, dict):
                for k in r:
                    n = canonical(k)[1]
                    if n is not None:
                        names.add(n)
        return names

    def score(self) -> float:
        m = self.metrics() - {"step", "epoch"}
        if not m:
            return 0.0
        weight = sum(_WEIGHT.get(n, _PREF_WEIGHT) for n in m)
        return weight * math.log2(1 + len(self.rows))

    def describe(self) -> str:
        n = len(self.rows)
        return f"{self.kind} ({n} row{'' if n == 1 else 's'}) at {self.where}"

    def contents(self) -> str:
        """What the block holds, for the report: its metrics, or the keys it has instead."""
        m = sorted(self.metrics() - {"step"})
        if m:
            return ", ".join(m[:6]) + (", ..." if len(m) > 6 else "")
        keys = sorted({str(k) for r in self.rows[:20] if isinstance(r, dict) for k in r})
        return "no metrics (" + ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "") + ")"


# ----------------------------------------------------------------------------- hints
_TRAINER = re.compile(r"\b(DPO|ORPO|KTO|CPO|SimPO|BCO|IPO)(?:Trainer|Config)\s*\(")
_LOSS_TYPE = re.compile(r"""\bloss_type\s*[=:]\s*\[?\s*["']([a-z_]+)["']""")
_NUM_ASSIGN = r"""\b{key}\s*[=:]\s*["']?([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\b"""
_BETA = re.compile(_NUM_ASSIGN.format(key="beta"))
_LR = re.compile(_NUM_ASSIGN.format(key="learning_rate"))
_TAGS = re.compile(r"^tags:\s*\n((?:\s*-\s*.+\n)+)", re.M)
_TAG_METHODS = {"dpo", "orpo", "kto", "simpo", "cpo"}


def single(values):
    """The value when a file states exactly one (a notebook that sweeps several says nothing); else None."""
    vals = set(values or [])
    return vals.pop() if len(vals) == 1 else None


def code_hints(text: str, hints: dict) -> None:
    """Trainer classes, loss_type, beta and learning_rate written in code (a notebook's cells, a pasted script)."""
    for m in _TRAINER.finditer(text):
        hints.setdefault("trainers", []).append(m.group(1).lower())
    for pattern, key in ((_LOSS_TYPE, "loss_type"), (_BETA, "beta"), (_LR, "learning_rate")):
        for m in pattern.finditer(text):
            v = m.group(1) if key == "loss_type" else to_float(m.group(1))
            if v is not None:
                hints.setdefault(key, []).append(v)


def card_hints(text: str, hints: dict) -> None:
    """A model card's front-matter tags (``- dpo``) and the method names in its title."""
    if text.startswith("---"):
        end = text.find("\n---", 3)
        m = _TAGS.search(text[:end if end > 0 else 4096] + "\n")
        if m:
            tags = {t.strip().strip("-").strip().strip("'\"").lower() for t in m.group(1).splitlines()}
            hints.setdefault("tags", []).extend(sorted(tags & _TAG_METHODS))
    title = next((ln for ln in text.splitlines() if ln.startswith("# ")), "")
    for meth in _TAG_METHODS:
        if re.search(rf"(?<![a-z]){meth}(?![a-z])", title.lower()):
            hints.setdefault("title", []).append(meth)


# ----------------------------------------------------------------------------- tables
# "|---|:--:|", "---|---|" (a card pasted without the outer pipes), "|-|---|" (one dash per cell is valid Markdown)
_MD_SEP = re.compile(r"^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")
_CELL_SPLIT = re.compile(r"\t|\s{2,}")
MISSING = {"", "no log", "-", "—", "none", "null", "n/a", "nan%"}
_TRAIN_LOSS = {"training_loss", "train_loss", "loss", "train/loss"}
_EVAL_LOSS = {"validation_loss", "eval_loss", "val_loss", "valid_loss", "eval/loss", "validation/loss"}


def _norm_head(h: str) -> str:
    h = h.strip().strip('"')
    if " - " in h:  # W&B's panel export: "<run name> - train/loss"
        h = h.rsplit(" - ", 1)[1]
    return re.sub(r"\s*/\s*", "/", h.strip()).lower().replace(" ", "_")


def table_columns(head: list[str]) -> list[str]:
    """Column headings -> keys :func:`parse.canonical` understands.

    transformers' notebook table and a model card's "Training results" put the evaluation next to the training
    loss: with a validation-loss column, every other metric column is an evaluation result. Without one (TRL's
    and Unsloth's training tables), the columns are training metrics.
    """
    norm = [_norm_head(h) for h in head]
    has_eval = any(n in _EVAL_LOSS for n in norm)
    out = []
    for n in norm:
        if n in _TRAIN_LOSS:
            out.append("loss")
        elif n in _EVAL_LOSS:
            out.append("eval_loss")
        elif n in ("step", "epoch", "steps", "global_step", "iter", "iteration") or n.startswith(("train", "eval",
                                                                                                "val")):
            out.append(n)
        else:
            out.append("eval_" + n if has_eval else n)
    return out


def _cell(c: str, v: str):
    """A table cell as a number where it reads as one (a float takes a third of the memory of its text, and
    a long CSV's rows are all held while the blocks are compared); else the text, as written."""
    x = to_float(v.replace(",", "") if c in ("step", "steps") else v)
    return v if x is None else x


def _cells_to_rows(head: list[str], body) -> list[dict]:
    cols = table_columns(head)
    return [{c: _cell(c, v) for c, v in zip(cols, cells) if v.strip().lower() not in MISSING} for cells in body]


def _heading_before(lines: list[str], i: int) -> str | None:
    for j in range(i - 1, max(-1, i - 60), -1):
        s = lines[j].strip()
        if s.startswith("#"):
            return s
    return None


def _md_cells(line: str) -> list[str]:
    line = line.strip()
    line = line[1:] if line.startswith("|") else line
    line = line[:-1] if line.endswith("|") else line
    return [c.strip() for c in line.split("|")]


def markdown_tables(lines: list[str], where: str) -> list[Block]:
    blocks = []
    i = 1
    while i < len(lines):
        # the heading row and the rule under it both need a pipe: a lone "---" is a rule or front matter
        if "|" in lines[i] and "|" in lines[i - 1] and _MD_SEP.match(lines[i]):
            head = _md_cells(lines[i - 1])
            body = []
            j = i + 1
            while j < len(lines) and "|" in lines[j] and lines[j].strip():
                body.append(_md_cells(lines[j]))
                j += 1
            h = _heading_before(lines, i - 1)
            b = Block("markdown table", f"{where}table {len(blocks) + 1}" + (f" under '{h[:60]}'" if h else "")
                      + f" (line {i})", _cells_to_rows(head, body))
            blocks.append(b)
            i = j
        else:
            i += 1
    return blocks


def text_tables(lines: list[str], where: str) -> list[Block]:
    """Tables printed with aligned columns: "Step  Training Loss  Validation Loss  Rewards/chosen ...".

    A heading line is one whose cells include a step/epoch column and at least one metric column."""
    blocks = []
    i = 0
    while i < len(lines):
        cells = [c.strip() for c in _CELL_SPLIT.split(lines[i].strip()) if c.strip()]
        low = [_norm_head(c) for c in cells]
        if len(cells) >= 2 and ({"step", "epoch", "steps"} & set(low)) and \
                any(canonical(c)[1] not in (None, "step", "epoch") for c in table_columns(cells)):
            body, j = [], i + 1
            while j < len(lines):
                vals = [c.strip() for c in _CELL_SPLIT.split(lines[j].strip()) if c.strip()]
                if not vals:
                    j += 1
                    continue
                if len(vals) != len(cells) or to_float(vals[0].replace(",", "")) is None:
                    break
                body.append(vals)
                j += 1
            if body:
                blocks.append(Block("notebook table", f"{where}line {i + 1}", _cells_to_rows(cells, body)))
                i = j
                continue
        i += 1
    return blocks


class _HTMLTables(HTMLParser):
    """Every <table> of an HTML text as (heading cells, body rows); nested markup inside cells is flattened."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tables, self._row, self._cell, self._depth = [], None, None, 0

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._depth += 1
            self.tables.append([])
        elif tag == "tr" and self._depth:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row and self.tables:
                self.tables[-1].append(self._row)
            self._row = None
        elif tag == "table" and self._depth:
            self._depth -= 1

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def html_tables(text: str, where: str) -> list[Block]:
    p = _HTMLTables()
    try:
        p.feed(text)
        p.close()
    except Exception:  # html.parser is lenient; a pathological input still must not cost the other blocks
        return []
    blocks = []
    for n, rows in enumerate(p.tables, 1):
        if len(rows) < 2:
            continue
        head, body = rows[0], rows[1:]
        if head and not head[0] and body and len(body[0]) == len(head):
            head = head[1:]  # pandas' index column: an empty heading
            body = [r[1:] for r in body]
        blocks.append(Block("HTML table", f"{where}HTML table {n}", _cells_to_rows(head, body)))
    return blocks


# ----------------------------------------------------------------------------- console lines
_DICT = re.compile(r"\{[^{}]*\}")
_NUMTXT = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_KV = re.compile(rf"([A-Za-z_][\w/.\-]*)\s*[=:]\s*(\"?{_NUMTXT}\"?|nan|inf|-inf)(?=[\s,;|)\]]|$)", re.I)
_BARE = re.compile(r"(?<![\w'\"])(-?inf|nan)(?![\w'\"])")
# "Iter 10: Train loss 0.693, Chosen reward 0.012, ..." (mlx_lm): labels of words, each followed by a number
_LABELLED = re.compile(rf"^\s*([A-Za-z][A-Za-z /_.\-]*?)\s+({_NUMTXT}|nan|inf)\b(?:\s*[A-Za-z/%]+)?\s*$", re.I)
_LEAD = re.compile(r"^\s*(?:\[[^\]]*\]\s*)?(?:(?:iter(?:ation)?|step|epoch)\s+(\d+)\s*[:,|\-]\s*)", re.I)
# what may precede a logged dict on its line: "15 {...}", "step 15: {...}", "train stats after 640 examples: {...}",
# or a tqdm bar "| 15/200 [00:30<..]"
_STEP_PREFIX = re.compile(r"(?:^|[\s\[(])(?:(?:global[ _])?step|iter(?:ation)?|after)?\s*[:=#]?\s*(\d+)"
                          r"(?:\s*examples?)?\s*[:|\-]?\s*$", re.I)
_TQDM_COUNT = re.compile(r"\|\s*(\d+)/\d+\s*\[[^\]]*\]")
# W&B's run summary, `name value` per line
_SUMMARY = re.compile(rf"^\s*(?:wandb:)?\s*([A-Za-z_][\w/.\-]*)\s+({_NUMTXT}|nan|inf|-inf)\s*$", re.I)
_FRACTION = re.compile(r"\d+/\d+")
_EVAL_WORDS = re.compile(r"^\s*(val|valid|validation|eval|test)\b", re.I)


# ast.literal_eval builds a syntax tree first: ~100 bytes per byte of input (a 16 MiB one-line repr peaked at 1.7 GB).
# A longer text is not evaluated whole; the console reader still finds the flat dicts inside it one by one.
LITERAL_MAX = 256 << 10


def literal_dict(text: str):
    try:
        obj = json.loads(text)
    except ValueError:
        if len(text) > LITERAL_MAX:
            return None
        try:  # Python's repr: single quotes, bare nan/inf
            obj = ast.literal_eval(_BARE.sub(r"'\1'", text))
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            return None
    return obj if isinstance(obj, dict) else None


# 'key': value pairs of a dict that is not a valid literal as a whole (a terminal overwrote part of the line)
_QUOTED_KV = re.compile(rf"""(['"])([A-Za-z_][\w/.\-]*)\1\s*:\s*(['"]?)({_NUMTXT}|nan|-?inf)\3(?=\s*[,}}])""", re.I)


def _quoted_pairs(text: str) -> dict | None:
    """The intact ``'name': number`` pairs of a damaged dict, when at least two of them are metrics: a pasted
    line garbled in one key must not cost the NaNs in the others."""
    d = {m.group(2): m.group(4) for m in _QUOTED_KV.finditer(text)}
    return d if len(d) >= 2 and _has_metric(d) else None


def step_number(digits: str):
    """A step read from a run of digits: an int, or past 18 digits a float (inf past float's range), since int()
    refuses over 4300 digits (Python's int-string limit); a non-finite step is then taken from the row order."""
    return int(digits) if len(digits) <= 18 else float(digits)


def _prefix_step(prefix: str):
    m = _TQDM_COUNT.search(prefix)
    if m and prefix.rstrip().endswith("]"):
        return step_number(m.group(1))
    m = _STEP_PREFIX.search(prefix[-80:])
    return step_number(m.group(1)) if m else None


def _has_metric(d: dict) -> bool:
    return any(canonical(k)[1] not in (None, "step", "epoch") for k in d)


def _labelled_row(line: str):
    """mlx_lm-style "Iter 10: Train loss 0.693, Chosen reward 0.01, Learning Rate 1e-05" -> a row, or None."""
    lead = _LEAD.match(line)
    rest = line[lead.end():] if lead else line
    parts = [p for p in rest.split(",") if p.strip()]
    if len(parts) < 2:
        return None
    row = {}
    evals = False
    for p in parts:
        m = _LABELLED.match(p)
        if not m:
            continue
        label = m.group(1).strip()
        evals = evals or bool(_EVAL_WORDS.match(label))
        row[label] = m.group(2)
    if len(row) < 2 or not _has_metric(row):
        return None
    if evals:  # "Iter 50: Val loss 0.61, Val took 3.2s": every number on the line is the evaluation's
        row = {k if _EVAL_WORDS.match(k) else f"val {k}": v for k, v in row.items()}
    if lead and lead.group(1):
        row["step"] = step_number(lead.group(1))
    return row


def console_block(lines: list[str], where: str) -> tuple[Block, Block]:
    """(the console rows block, the `name value` summary block) of a text's lines."""
    rows, ignored, n_ignored, summary = [], [], 0, {}  # ignored: the first few only (a log is mostly tqdm lines)
    keys: dict = {}
    if any(ln.count("{") > ln.count("}") for ln in lines):
        lines = _join_wrapped(lines)
    for line in lines:
        if not line.strip():
            continue
        found = False
        if "{" in line:
            for m in _DICT.finditer(line):
                d = literal_dict(m.group(0)) or _quoted_pairs(m.group(0))
                if d:
                    # one str object per distinct key, not one per row (a parsed literal's keys are all new)
                    d = {keys.setdefault(k, k) if isinstance(k, str) else k: v for k, v in d.items()}
                    for k, v in d.items():  # ms-swift: 'global_step/max_steps': '5/100'
                        if isinstance(v, str) and canonical(k)[1] == "step" and _FRACTION.fullmatch(v.strip()):
                            d[k] = step_number(v.strip().split("/")[0])
                    if not any(canonical(k)[1] == "step" for k in d):
                        # what precedes this dict on its line, not the whole line so far (a one-line dump holds
                        # thousands of dicts: slicing from 0 each time would be quadratic)
                        step = _prefix_step(line[max(0, m.start() - 400):m.start()])
                        if step is not None:
                            d["step"] = step
                    rows.append(d)
                    found = True
        if not found and ("=" in line or ":" in line):
            d = {k: v.strip('"') for k, v in _KV.findall(line)}
            if len(d) >= 2 and _has_metric(d):
                if not any(canonical(k)[1] == "step" for k in d):
                    m = _TQDM_COUNT.search(line)
                    if m:
                        d["step"] = step_number(m.group(1))
                rows.append(d)
                found = True
        if not found and "," in line:
            d = _labelled_row(line)
            if d:
                rows.append(d)
                found = True
        if not found:
            m = _SUMMARY.match(line)
            if m and canonical(m.group(1))[1] is not None:
                summary[m.group(1)] = m.group(2)
                found = True
        if not found:
            n_ignored += 1
            if len(ignored) < 3:
                ignored.append(line.strip()[:120])
    console = Block("console log", f"{where}lines", rows,
                    info={"ignored_lines": n_ignored, "ignored_examples": ignored})
    summ = Block("summary lines (name value)", f"{where}lines", [summary] if summary else [])
    return console, summ


def _join_wrapped(lines: list[str]) -> list[str]:
    """Join a dict broken over several lines back into one: a pasted piece of trainer_state.json, or a console
    dict wrapped by a terminal or an issue tracker, even inside a key or a number ('13/9' + '4')."""
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        depth = line.count("{") - line.count("}")
        j = i + 1
        while depth > 0 and j < len(lines) and j - i < 200:
            nxt = lines[j].lstrip()
            nxt = nxt[2:] if nxt.startswith("> ") else nxt  # a quoted paste marks every line
            line += nxt
            depth += nxt.count("{") - nxt.count("}")
            j += 1
        if depth == 0 and j > i + 1:
            out.append(line)
            i = j
        else:
            out.append(lines[i])
            i += 1
    return out


# ----------------------------------------------------------------------------- Rich key/value tables
# tinker-cookbook (and other loggers built on Rich) print each step's metrics as a two-column box table under a
# "Step N" title: "│ dpo_loss │ 0.683825 │". Each table is one row; a console log of them is the run.
_BOX_ROW = re.compile(rf"^\s*[│┃]\s*([A-Za-z_][\w/.:\- ]*?)\s*[│┃]\s*({_NUMTXT}|nan|-?inf)\s*[│┃]\s*$", re.I)
_BOX_STEP = re.compile(r"^\s*(?:step|iter(?:ation)?)\s+(\d+)\b", re.I)


def box_tables(lines: list[str], where: str) -> Block:
    """Two-column box-drawn tables of name/value lines, one row each, stepped by the "Step N" title above."""
    rows, row, step, title_at = [], {}, None, -10
    for i, ln in enumerate(lines):
        m = _BOX_ROW.match(ln)
        if m:
            row[m.group(1).strip()] = m.group(2)
            continue
        if row and not ln.strip().startswith(("│", "┃", "┡", "├", "╞", "┣", "└", "╰", "┗", "┏", "┌", "╭")):
            if _has_metric(row):
                if step is not None and "step" not in row:
                    row["step"] = step
                rows.append(row)
            row, step = {}, None
        t = _BOX_STEP.match(ln)
        if t:
            step, title_at = step_number(t.group(1)), i
        elif step is not None and not row and i - title_at > 3:
            step = None  # a "Step N" title sits right above its table
    if row and _has_metric(row):
        if step is not None and "step" not in row:
            row["step"] = step
        rows.append(row)
    return Block("key/value box tables (Rich)", f"{where}box tables", rows)


# ----------------------------------------------------------------------------- per-step bullet lists
# NeMo-RL prints each step as "===== Step 2/10 =====" followed by "📊 Training Results:" and
# "📊 Validation Results" blocks of "• name: value" lines: one row per list, stepped by the header above it.
_STEP_HEADER = re.compile(r"^[\s=#*\-─━]*(?:step|iter(?:ation)?)\s+(\d+)(?:\s*/\s*\d+)?[\s=#*\-─━]*$", re.I)
_BULLET = re.compile(rf"^\s*[•·]\s*([A-Za-z][\w/ .()\-]*?)\s*:\s*({_NUMTXT}|nan|-?inf)\s*$", re.I)
_EVAL_HEAD = re.compile(r"\b(?:validation|evaluation|eval)\b", re.I)


def stepped_lists(lines: list[str], where: str) -> Block:
    """Bullet lists of ``• name: value`` under a "Step N" header line, one row per list; a list whose heading
    (the last non-blank line before it) says validation or eval is the eval split's."""
    rows, row, step, evals, head = [], {}, None, False, ""

    def flush():
        if row and step is not None and _has_metric(row):
            out = {(f"eval_{k}" if evals and not _EVAL_WORDS.match(k) else k): v for k, v in row.items()}
            out["step"] = step
            rows.append(out)
    for ln in lines:
        m = _BULLET.match(ln)
        if m:
            if not row:
                evals = bool(_EVAL_HEAD.search(head))
            row[m.group(1).strip()] = m.group(2)
            continue
        flush()
        row = {}
        s = _STEP_HEADER.match(ln)
        if s:
            step = step_number(s.group(1))
        if ln.strip():
            head = ln
    flush()
    return Block("per-step bullet lists", f"{where}step lists", rows)


# ----------------------------------------------------------------------------- a model card's results list
# "- Loss: 0.24" in the card's Markdown; "• Loss: 0.24" where the card was copied from the rendered page
_CARD_ITEM = re.compile(rf"^\s*[-*•·]\s*([A-Za-z][\w/ .()-]*?)\s*:\s*({_NUMTXT}|nan|inf)\s*$", re.I)


def card_lists(lines: list[str], where: str) -> tuple[Block, dict]:
    """A model card's "results on the evaluation set" list (one eval row) and its hyperparameters list."""
    results, hyper, target = {}, {}, None
    for ln in lines:
        low = ln.lower()
        if "results on the evaluation set" in low or "achieves the following results" in low:
            target = results
            continue
        if "hyperparameters were used" in low:
            target = hyper
            continue
        if ln.strip().startswith("#"):
            target = None
            continue
        m = _CARD_ITEM.match(ln)
        if m and target is not None:
            target[m.group(1).strip()] = m.group(2)
    hp = {k.strip().lower().replace(" ", "_"): to_float(v) for k, v in hyper.items() if to_float(v) is not None}
    row = {}
    for k, v in results.items():
        n = _norm_head(k)
        row["eval_loss" if n in _TRAIN_LOSS | _EVAL_LOSS else n if n.startswith(("eval", "val")) else "eval_" + n] = v
    return Block("model card results list", f"{where}results list", [row] if row else []), hp


# ----------------------------------------------------------------------------- CSV
def csv_head(text: str) -> tuple[str, str]:
    """The header line and the delimiter it uses most (tab, comma or semicolon)."""
    head = text.lstrip().split("\n", 1)[0]
    return head, max(("\t", ",", ";"), key=head.count)


def looks_like_csv(text: str) -> bool:
    head, delim = csv_head(text)
    if head.count(delim) < 1 or "{" in head or head.lstrip().startswith("|"):
        return False
    cols = [c.strip().strip('"') for c in head.split(delim)]
    num = re.compile(_NUMTXT)
    return any(canonical(c)[1] for c in cols) and not any(num.fullmatch(c) for c in cols if c)


# ----------------------------------------------------------------------------- containers
def _lines(text: str, start: int = 0):
    """The lines of ``text`` with their endings, one at a time (io.StringIO would hold a 4-byte-per-character copy)."""
    n = len(text)
    while start < n:
        end = text.find("\n", start)
        end = n if end < 0 else end + 1
        yield text[start:end]
        start = end


def csv_block(text: str, where: str, source: str = "the input") -> Block:
    # a field may be as long as the text (already within the log size cap): csv's default limit of 128 KiB would
    # otherwise end a real export with one long cell (a W&B table of samples) in csv.Error
    if csv.field_size_limit() < len(text) + 1:
        csv.field_size_limit(len(text) + 1)
    reader = csv.reader(_lines(text, len(text) - len(text.lstrip())), delimiter=csv_head(text)[1])
    try:
        head = next(reader, [])
        return Block("csv/tsv", f"{where}CSV", _cells_to_rows(head, (r for r in reader if r)))
    except csv.Error as exc:
        raise PrefpilotError(f"{source}: not readable as CSV at line {reader.line_num}: {exc} (fix or remove that "
                             "row, or pass the run's metrics.jsonl / trainer_state.json)", code="unreadable_history") \
            from None


def text_blocks(text: str, where: str = "", hints: dict | None = None, source: str = "the input") -> list[Block]:
    """Every candidate block of a plain text, Markdown, HTML, CSV or console log."""
    if looks_like_csv(text):  # aligned notebook tables pasted with tabs read as both: the table comes first
        tables = text_tables(text.splitlines(), where)  # the lines are let go before the CSV's rows are built
        return tables + [csv_block(text, where, source)]
    lines = text.splitlines()
    blocks = []
    if "|" in text:
        blocks += markdown_tables(lines, where)
    low = text.lower()
    has_html, has_steps = "<table" in low, "step" in low or "epoch" in low
    del low  # a copy of the whole text: not kept while the blocks are built
    if has_html:
        blocks += html_tables(text, where)
    if has_steps:
        blocks += text_tables(lines, where)
    if "│" in text or "┃" in text:
        blocks.append(box_tables(lines, where))
    if "•" in text or "·" in text:
        blocks.append(stepped_lists(lines, where))
    console, summary = console_block(lines, where)
    blocks += [console, summary]
    card, hp = card_lists(lines, where)
    if card.rows:
        card.info["hyperparameters"] = hp
        blocks.append(card)
    if hints is not None:
        code_hints(text, hints)
        card_hints(text, hints)
    return blocks


def _joined(src) -> str:
    return "".join(src) if isinstance(src, list) else str(src or "")


def notebook_blocks(nb: dict, hints: dict) -> list[Block]:
    """The blocks of a saved Jupyter notebook: each output's tables, and every cell's console lines as one log."""
    blocks, console_lines, console_cells = [], [], []
    for i, cell in enumerate(nb.get("cells") or [], 1):
        if not isinstance(cell, dict):
            continue
        src = _joined(cell.get("source"))
        if cell.get("cell_type") == "code":
            code_hints(src, hints)
        elif cell.get("cell_type") == "markdown":
            card_hints(src, hints)
        for out in cell.get("outputs") or []:
            if not isinstance(out, dict):
                continue
            texts = []
            if out.get("output_type") == "stream":
                texts.append(_joined(out.get("text")))
            data = out.get("data") if isinstance(out.get("data"), dict) else {}
            if "text/html" in data:
                blocks += html_tables(_joined(data["text/html"]), f"cell {i} (text/html), ")
            elif "text/plain" in data:
                texts.append(_joined(data["text/plain"]))
            for t in texts:
                lines = t.splitlines()
                blocks += text_tables(lines, f"cell {i} (text), ")
                blocks += markdown_tables(lines, f"cell {i} (text), ")
                console_lines += lines
                console_cells.append(i)
    if console_lines:
        cells = sorted(set(console_cells))
        span = f"cells {cells[0]}-{cells[-1]}" if len(cells) > 1 else f"cell {cells[0]}"
        console, summary = console_block(console_lines, f"the text outputs of {span}, ")
        console.kind = summary.kind = "notebook " + console.kind
        blocks += [console, summary]
    for b in blocks:
        if not b.kind.startswith("notebook"):  # a saved notebook's table or log
            b.kind = "notebook " + b.kind
    return blocks


def best(blocks: list[Block], info: dict, source: str) -> list[dict]:
    """The rows of the best-scoring block (joined with a block that holds the other split), reported in ``info``."""
    scored = sorted(((b.score(), n, b) for n, b in enumerate(blocks) if b.rows), key=lambda t: (-t[0], t[1]))
    if not scored or scored[0][0] == 0:
        closest = max(blocks, key=lambda b: len(b.rows), default=None)
        near = ""
        if closest is not None and closest.rows:
            near = f"; the closest thing found: {closest.describe()}, {closest.contents()}"
        raise PrefpilotError(f"no preference metrics found in {source}{near}: expected keys like loss, "
                             "rewards/margins, rewards/accuracies, logps/chosen (pass the training log, "
                             "trainer_state.json, or the notebook or card that shows its table)", code="no_metrics")
    top = scored[0][2]
    rows = list(top.rows)
    used = [top]
    splits = _splits(top)
    for _, _, b in scored[1:]:
        # a notebook's eval dict printed in another cell, a card's table plus its final results list
        other = _splits(b)
        if other and not other & splits and b.metrics() - {"step", "epoch"} and _stepped(b) == _stepped(top):
            rows += b.rows
            used.append(b)
            splits |= other
    info["format"] = top.kind
    info["block"] = "; ".join(b.describe() for b in used)
    skipped = [b for _, _, b in scored if b not in used]
    if skipped:
        info["skipped_blocks"] = [f"{b.describe()}: {b.contents()}" for b in skipped[:5]]
    for b in used:
        info.update(b.info)
        info["notes"] += b.notes
    return rows


def _stepped(b: Block) -> bool:
    return any(canonical(k)[1] == "step" for r in b.rows[:5] if isinstance(r, dict) for k in r)


def _splits(b: Block) -> set:
    out = set()
    for r in b.rows[:50]:
        if isinstance(r, dict):
            for k in r:
                split, name = canonical(k)
                if name not in (None, "step", "epoch", "learning_rate"):
                    out.add(split)
    return out
