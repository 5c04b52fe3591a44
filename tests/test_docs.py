"""The docs stay true to the code and to themselves: the settings table of docs/algorithm.md is
what docs/settings_table.py generates from settings.py now; every relative link in README.md,
docs/**/*.md, lab/**/*.md and benchmarks/probes/README.md reaches an existing file or folder (and,
with a
#fragment into a markdown file, one of its headings); and every repository file a doc names in
its text (a probe's command, a script, a data file) exists."""
from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
REGENERATE = ".venv/bin/python docs/settings_table.py --write"
sys.path.insert(0, str(ROOT / "docs"))          # the generators of the docs' generated sections


def _settings_table():
    import settings_table
    return settings_table


def test_settings_table_is_current():
    table = _settings_table()
    text = (ROOT / "docs" / "algorithm.md").read_text(encoding="utf-8")
    assert table.BEGIN in text and table.END in text, (
        f"docs/algorithm.md lost the settings table's markers; restore them and run {REGENERATE}")
    assert table.current_section(text) == table.section(), (
        f"docs/algorithm.md's settings table differs from settings.py's declarations; "
        f"regenerate it: {REGENERATE}")


def test_settings_table_has_a_row_per_setting_and_preset_column():
    from dataclasses import fields

    from cramfast.presets import PRESETS
    from cramfast.settings import BatchSettings, TextSettings
    rows = _settings_table().render().splitlines()
    names = [f.name for cls in (TextSettings, BatchSettings) for f in fields(cls)]
    assert [row.split(" | ")[0].strip("| `") for row in rows[2:]] == names
    header = rows[0]
    assert all(f"`{name}`" in header for name in PRESETS)


# ---------------------------------------------------------------------------------------------
# links

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def _markdown_files() -> list[Path]:
    return ([ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
            + sorted((ROOT / "lab").rglob("*.md")) + [ROOT / "benchmarks" / "probes" / "README.md"])


def _prose(text: str) -> str:
    """The text without fenced code blocks and code spans (their brackets are not links)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lower case, punctuation dropped, spaces as -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = _slug(heading)
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def links(path: Path) -> list[str]:
    prose = _prose(path.read_text(encoding="utf-8"))
    return INLINE_LINK.findall(prose) + REFERENCE.findall(prose)


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in links(path):
        if SCHEME.match(target):
            continue
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target} (no such file or folder)")
        elif fragment and dest.suffix == ".md" and unquote(fragment) not in anchors(dest):
            broken.append(f"{target} (no heading #{fragment} in {file_part})")
    return broken


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert broken_links(path) == []


def test_link_checker_sees_links_and_headings(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("# A `code` heading = 1\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "a.md"
    page.write_text("[ok](sub/b.md#a-code-heading--1) [twice](sub/b.md#twice-1) [gone](nope.md)\n"
                    "[bad anchor](sub/b.md#missing) ![img](sub) [web](https://example.org)\n"
                    "`[not a link](nowhere.md)`\n```\n[nor this](nowhere.md)\n```\n"
                    "[ref]: sub/missing.md\n")
    assert broken_links(page) == ["nope.md (no such file or folder)",
                                  "sub/b.md#missing (no heading #missing in sub/b.md)",
                                  "sub/missing.md (no such file or folder)"]


# ---------------------------------------------------------------------------------------------
# files named in the text (commands, scripts, data), links or not

# A path from the repository root to a file, as docs write them in commands and prose:
# benchmarks/probes/tail_levers.py, docs/settings_table.py, cramfast/sizing.py ...
NAMED_FILE = re.compile(r"(?<![\w./-])((?:benchmarks|cramfast|csrc|docs|kernels|tests)/"
                        r"[\w./-]*\w\.(?:py|sh|md|txt|csv|json|toml|cpp|h))\b")


def _docs_and_outputs() -> list[Path]:
    """The markdown docs and the probe outputs whose header lines say how to rerun them."""
    return _markdown_files() + sorted((ROOT / "docs").rglob("*.txt"))


def missing_files(path: Path, root: Path = ROOT) -> list[str]:
    named = sorted(set(NAMED_FILE.findall(path.read_text(encoding="utf-8"))))
    return [name for name in named if not (root / name).is_file()]


@pytest.mark.parametrize("path", _docs_and_outputs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_named_repository_files_exist(path):
    assert missing_files(path) == []


def test_named_probes_exist():
    probes = {name for path in _docs_and_outputs()
              for name in NAMED_FILE.findall(path.read_text(encoding="utf-8"))
              if name.startswith("benchmarks/probes/") and name.endswith(".py")}
    assert probes, "no doc names a probe: the pattern no longer matches how docs name them"
    assert sorted(p for p in probes if not (ROOT / p).is_file()) == []


def test_named_file_checker(tmp_path):
    (tmp_path / "benchmarks" / "probes").mkdir(parents=True)
    (tmp_path / "benchmarks" / "probes" / "init_probe.py").write_text("")
    page = tmp_path / "a.md"
    page.write_text("`.venv/bin/python benchmarks/probes/init_probe.py --bow 1` and\n"
                    "python docs/study/tail_levers.py -, cramfast/grids/*.toml, see\n"
                    "benchmarks/probes/gone.py; ../shared/data/books/x.txt; mydocs/a.py\n")
    assert missing_files(page, tmp_path) == ["benchmarks/probes/gone.py",
                                             "docs/study/tail_levers.py"]


def test_the_list_of_tested_families_is_current():
    import families_table as table
    text = table.PAGE.read_text(encoding="utf-8")
    assert table.BEGIN in text and table.END in text
    assert table.current_section(text) == table.section(), (
        "docs/models.md's list of tested families differs from tests/model_families.py; "
        "regenerate it: .venv/bin/python docs/families_table.py --write")
