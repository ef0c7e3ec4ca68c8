"""The config keys as people read them, generated from the schema (:func:`.config.key_table`): the key listing
of ``dynconv train --help`` (wrapped to the terminal) and the key table of docs/training.md, so neither can go
stale. ``python -m dynconv.launch.config_docs --write docs/training.md`` regenerates the table (between the
``<!-- keys:begin -->`` / ``<!-- keys:end -->`` comments); ``--check`` says whether it is current."""
from __future__ import annotations

import argparse
import re
import shutil
import sys
import textwrap
from pathlib import Path

from dynconv.errors import DynconvError

from .config import MOVED_KEYS, key_table

BEGIN, END = "<!-- keys:begin -->", "<!-- keys:end -->"
REGENERATE = "python -m dynconv.launch.config_docs --write docs/training.md"


# ---- dynconv train --help -------------------------------------------------------------------------------------

class _Wrapper(textwrap.TextWrapper):
    """Also breaks after ``|``, so a long list of choices (``none|constant|uniform_subsets|...``) wraps."""

    wordsep_re = wordsep_simple_re = re.compile(r"(\s+|[^\s|]+\|+|[^\s|]+|\|+)")


def _wrap(text: str, width: int, first: str, rest: str) -> list[str]:
    return _Wrapper(width, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False).wrap(text) or [first]


def help_text(width: int | None = None) -> str:
    """Every config key with its type, default and meaning, for ``dynconv train --help``, in lines of at most
    ``width`` characters (default: the terminal's, less 2, as argparse does)."""
    width = width or shutil.get_terminal_size().columns - 2
    rows = key_table()
    keys = max(len(k) for k, *_ in rows)
    narrow = width - keys - 4 < 40  # a narrow terminal: type and meaning under the key
    indent = " " * (6 if narrow else keys + 4)
    lines = _wrap("config keys (dotted.key=value; type, default, meaning):", width, "", "")
    section = None
    for key, typ, default, doc in rows:
        if key.split(".")[0] != section:
            section = key.split(".")[0]
            lines.append("")
        if narrow:
            lines += [f"  {key}", *_wrap(f"{typ} = {default}", width, indent, indent)]
        else:
            lines += _wrap(f"{typ} = {default}", width, f"  {key:<{keys}}  ", indent)
        if doc:
            lines += _wrap(doc, width, indent, indent)
    lines += ["", *_wrap("keys that moved (still read, with a warning): "
                         + ", ".join(f"{old} -> {new}" for old, new in MOVED_KEYS.items()), width, "", "  ")]
    return "\n".join(lines)


# ---- docs/training.md -----------------------------------------------------------------------------------------

def _cell(text: str) -> str:
    """Markdown table cell text: a ``|`` would end the cell, ``<class>`` would be read as an HTML tag."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace("*", "\\*")


def _code(text: str) -> str:
    return f"`{text.replace('|', chr(92) + '|')}`"  # GitHub reads \| inside a table's code span as |


def markdown_table() -> str:
    """The block between the markers: one row per key (key, type, default, meaning), then the keys that moved."""
    lines = [f"<!-- generated from launch/config.py by `{REGENERATE}`: edit the schema, not this table -->",
             "", "| key | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| {_code(key)} | {_code(typ)} | {_code(default)} | {_cell(doc)} |"
              for key, typ, default, doc in key_table()]
    moved = ", ".join(f"`{old}` → `{new}`" for old, new in MOVED_KEYS.items())
    lines += ["", f"Keys that moved, still read (with a warning naming the new key): {moved}."]
    return "\n".join(lines)


def _split(text: str, path: Path) -> tuple[str, str, str]:
    """(before the table, the table, after it) of a page with the two markers."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise DynconvError(f"{path} needs one {BEGIN} and, after it, one {END} line around the key table")
    head, rest = text.split(BEGIN)
    body, tail = rest.split(END)
    return head, body, tail


def current_table(path: str | Path) -> str:
    """The table as ``path`` has it now (between the markers, without the blank lines around it)."""
    return _split(Path(path).read_text(encoding="utf-8"), Path(path))[1].strip("\n")


def write(path: str | Path) -> bool:
    """Put the generated table between the markers of ``path``; whether it changed."""
    path = Path(path)
    head, body, tail = _split(path.read_text(encoding="utf-8"), path)
    new = f"{head}{BEGIN}\n{markdown_table()}\n{END}{tail}"
    if body.strip("\n") == markdown_table():
        return False
    path.write_text(new, encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dynconv.launch.config_docs",
                                description="The config keys from the schema: the table of docs/training.md.")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--write", metavar="PAGE", help="replace the table between the keys markers of PAGE")
    g.add_argument("--check", metavar="PAGE", help="exit 1 if PAGE's table differs from the schema's")
    a = p.parse_args(argv)
    try:
        if a.write:
            print(f"{'updated' if write(a.write) else 'already current:'} {a.write}")
        elif a.check:
            if current_table(a.check) != markdown_table():
                print(f"{a.check}: the key table is out of date: run {REGENERATE}", file=sys.stderr)
                return 1
        else:
            print(markdown_table())
    except (DynconvError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
