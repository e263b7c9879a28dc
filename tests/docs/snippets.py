"""The code blocks of the user-facing docs, as data for the snippet tests.

Callers: `tests/docs/test_snippets.py`. Markdown fenced blocks of README.md and docs/*.md, and the
command lines of the chart's NOTES.txt as Helm renders it; shell text is split into commands the
way a shell reads them (continuation lines joined, comments dropped, `&&`, `;` and `|` split).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: the documents whose every code block is checked
DOCUMENTS = ("README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")))

_FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass(frozen=True)
class Snippet:
    """One fenced block: where it is, its language tag, and its text."""

    source: str
    line: int
    lang: str
    text: str

    @property
    def first_line(self) -> str:
        return next((ln.strip() for ln in self.text.splitlines() if ln.strip()), "")

    def __str__(self) -> str:
        return f"{self.source}:{self.line} ({self.lang or 'no language'}) {self.first_line[:60]!r}"


def fenced(source: str) -> list[Snippet]:
    """Every fenced block of a Markdown file under the repository."""
    out: list[Snippet] = []
    lang, start, lines = None, 0, []
    for n, line in enumerate((REPO / source).read_text().splitlines(), start=1):
        m = _FENCE.match(line)
        if lang is None and m:
            lang, start, lines = m.group(1), n, []
        elif lang is not None and line.strip() == "```":
            out.append(Snippet(source, start, lang, "\n".join(lines) + "\n"))
            lang = None
        elif lang is not None:
            lines.append(line)
    assert lang is None, f"{source}: the block opened at line {start} is never closed"
    return out


def all_snippets() -> list[Snippet]:
    return [s for doc in DOCUMENTS for s in fenced(doc)]


def shell_lines(text: str) -> list[str]:
    """Logical lines of shell text: continuations joined, comments and heredoc bodies dropped."""
    out: list[str] = []
    pending = ""
    heredoc_end: str | None = None
    for raw in text.splitlines():
        if heredoc_end is not None:
            if raw.strip() == heredoc_end:
                heredoc_end = None
            continue
        line = pending + raw
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        code = _strip_comment(line).strip()
        if code:
            out.append(code)
        if m := re.search(r"<<-?\s*'?(\w+)'?", code):
            heredoc_end = m.group(1)
    return out


def _strip_comment(line: str) -> str:
    """The line without a trailing `# comment` outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def commands(text: str) -> list[list[str]]:
    """The simple commands of shell text, as argument lists (`&&`, `;`, `|`, `&` split; redirections kept)."""
    out: list[list[str]] = []
    for line in shell_lines(text):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        current: list[str] = []
        for token in lexer:
            if token and set(token) <= set(";&|"):
                if current:
                    out.append(current)
                current = []
            else:
                current.append(token)
        if current:
            out.append(current)
    return out


def heredoc(text: str, marker: str) -> str:
    """The body of the `<<'MARKER'` heredoc in shell text."""
    m = re.search(rf"<<-?\s*'?{marker}'?\n(.*?)\n{marker}\n", text, re.S)
    assert m, f"no <<{marker} heredoc"
    return m.group(1) + "\n"


def notes_command_lines(notes: str) -> list[str]:
    """The indented command lines of rendered NOTES.txt (continuations joined)."""
    block = "\n".join(ln for ln in notes.splitlines() if ln.startswith("     "))
    return shell_lines(block)
