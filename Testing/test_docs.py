"""The documents' relative links point to files that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

DOCUMENTS = sorted(
    [ROOT / "README.md", ROOT / "Resources" / "Models" / "MODEL_CARD.md", ROOT / "training_recipes" / "README.md"]
    + list((ROOT / "docs").glob("*.md"))
)

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")
"""A Markdown link or image: ``[text](target)``, ``[text](target "title")``, ``![alt](target)``."""

_FENCE = re.compile(r"^(```|~~~)")


def relative_link_targets(text: str) -> list[tuple[int, str]]:
    """``(line, target)`` of every relative link in Markdown ``text``, outside fenced code blocks and
    inline code; web addresses, ``mailto:`` and in-page anchors (``#section``) are left out."""
    found = []
    in_fence = False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line.strip()):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        line = re.sub(r"`[^`]*`", "", line)
        for match in _LINK.finditer(line):
            target = match.group(1) or match.group(2)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
                continue
            found.append((number, target))
    return found


def broken_links(document: Path) -> list[str]:
    """``"LINE: target"`` for each relative link of ``document`` whose file or folder does not exist."""
    problems = []
    for line, target in relative_link_targets(document.read_text(encoding="utf-8")):
        path = target.split("#", 1)[0]
        if not (document.parent / path).exists():
            problems.append(f"{line}: {target}")
    return problems


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(document):
    assert document.is_file(), f"{document.relative_to(ROOT)} is missing"
    problems = broken_links(document)
    assert not problems, f"{document.relative_to(ROOT)}: links to missing files:\n" + "\n".join(problems)


def test_the_link_checker_catches_a_planted_broken_link(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text("# there\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "See [there](there.md#section), [up](../docs/there.md), [web](https://example.org/x.md), "
        "[anchor](#local) and ![image](missing.png).\n"
        "Broken: [gone](gone.md) and [titled](../nowhere/file.md \"a title\").\n"
        "```\n[in code](not_checked.md)\n```\n"
        "Inline `[in code](not_checked_either.md)` too.\n"
    )
    assert broken_links(page) == ["1: missing.png", "2: gone.md", "2: ../nowhere/file.md"]


def test_performance_page_prints_the_current_presets():
    """docs/performance.md shows the presets' settings as ``preset_table()`` prints them today."""
    from MLVIRNETLib.registration.presets import preset_table

    page = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    assert preset_table() in page, (
        "docs/performance.md: paste the output of\n"
        '  python -c "from MLVIRNETLib.registration.presets import preset_table; print(preset_table())"'
    )


def test_the_register_help_quotes_the_preset_figures_of_the_performance_page() -> None:
    """Each preset line of ``mlvirnet register --help`` gives figures of that preset's row in the
    first table of docs/performance.md (a figure measured again changes both, or this fails)."""
    from MLVIRNETLib.cli.register import EPILOG
    from MLVIRNETLib.registration.presets import PRESETS

    page = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    number = re.compile(r"\d+\.\d+")
    for preset in PRESETS:
        help_line = next(line for line in EPILOG.splitlines() if line.strip().startswith(preset + " "))
        row = next(line for line in page.splitlines() if line.startswith(f"| `{preset}`"))
        in_help = set(number.findall(help_line.split(":", 1)[1]))
        assert len(in_help) >= 5 and in_help <= set(number.findall(row)), (preset, in_help - set(number.findall(row)))
