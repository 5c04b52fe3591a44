"""A generated part of a markdown file: what a docs script writes between its two markers, and
what tests/test_docs.py compares with what the script renders."""
from __future__ import annotations

from pathlib import Path


class GeneratedSection:
    def __init__(self, path: Path, begin: str, end: str, render):
        self.path, self.begin, self.end, self.render = path, begin, end, render

    def section(self) -> str:
        """What belongs between the markers: the rendered text, a blank line either side."""
        return "\n" + self.render() + "\n"

    def current_section(self, text: str) -> str:
        """What sits between the markers in ``text`` (the file's contents)."""
        start = text.index(self.begin) + len(self.begin) + 1
        return text[start:text.index(self.end, start)]

    def write(self) -> None:
        text = self.path.read_text(encoding="utf-8")
        old = self.current_section(text)
        start = text.index(self.begin) + len(self.begin) + 1
        self.path.write_text(text[:start] + self.section() + text[start + len(old):],
                             encoding="utf-8")
