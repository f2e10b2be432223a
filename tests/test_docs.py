"""The documentation stays true: the CLI reference is generated and fresh, every relative
link points to a file, and every ``wsi`` command line shown in the docs names a real
subcommand and parses."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted((REPO / "docs").glob("*.md"))
MARKDOWN = [REPO / "README.md", *DOCS]
GLOBAL_FLAGS = {"-v", "--verbose", "-q", "--quiet"}


def _gen():
    spec = importlib.util.spec_from_file_location(
        "gen_cli_docs", REPO / "tools" / "gen_cli_docs.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen():
    return _gen()


@pytest.fixture(scope="module")
def parser():
    from pipelines.cli import build_parser

    return build_parser()


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(REPO)) for p in paths]


# -- docs/cli.md -----------------------------------------------------------------------


def test_cli_reference_is_up_to_date(gen) -> None:
    doc = REPO / "docs" / "cli.md"
    assert doc.exists(), "docs/cli.md is missing: run python tools/gen_cli_docs.py"
    assert doc.read_text(encoding="utf-8") == gen.render(), (
        "docs/cli.md is out of date with pipelines/cli.py: run python tools/gen_cli_docs.py"
    )


def test_cli_reference_names_every_subcommand(gen) -> None:
    text = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    names = list(gen.commands())
    assert names, "the parser has no subcommands?"
    missing = [n for n in names if f"### `wsi {n}`" not in text]
    assert not missing, f"docs/cli.md lacks {missing}: run python tools/gen_cli_docs.py"


def test_render_ignores_terminal_width(gen, monkeypatch) -> None:
    base = gen.render()
    monkeypatch.setenv("COLUMNS", "40")
    assert gen.render() == base


def test_check_mode_reports_stale_file(gen, tmp_path, monkeypatch, capsys) -> None:
    stale = tmp_path / "cli.md"
    stale.write_text("old\n", encoding="utf-8")
    monkeypatch.setattr(gen, "DOC", stale)
    assert gen.main(["--check"]) == 1
    assert "gen_cli_docs.py" in capsys.readouterr().out
    assert gen.main([]) == 0
    assert gen.main(["--check"]) == 0


# -- links -----------------------------------------------------------------------------

FENCE = re.compile(r"^\s*(```|~~~).*?^\s*\1", re.S | re.M)
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+[\"'(][^)]*)?\)")
REF_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.M)


def _links(text: str) -> list[str]:
    text = INLINE_CODE.sub("", FENCE.sub("", text))
    found = INLINE_LINK.findall(text) + REF_LINK.findall(text)
    return [t.strip("<>") for t in found]


def test_link_parser() -> None:
    text = (
        '[a](docs/a.md) ![img](img/x.png "t") [w](https://x.org) [s](#sec) [r][1]\n'
        "`[not](a link)`\n```\n[nor](this.md)\n```\n[1]: <ref.md#part>\n"
    )
    assert _links(text) == ["docs/a.md", "img/x.png", "https://x.org", "#sec", "ref.md#part"]


@pytest.mark.parametrize("md", MARKDOWN, ids=_ids(MARKDOWN))
def test_relative_links_point_to_files(md: Path) -> None:
    broken = []
    for target in _links(md.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # http(s), mailto, ...; an anchor in the same file
        path = target.split("#", 1)[0].split("?", 1)[0]
        if path and not (md.parent / path).exists():
            broken.append(target)
    assert not broken, f"{md.relative_to(REPO)} links to missing files: {broken}"


# -- command lines in the docs ---------------------------------------------------------


def _command_lines(text: str) -> list[str]:
    """``wsi ...`` lines inside fenced code blocks, continuation lines joined."""
    lines = []
    for block in FENCE.finditer(text):
        pending = ""
        for raw in block.group(0).splitlines()[1:-1]:
            line = raw.strip()
            if pending:
                pending += " " + line
            elif line.startswith(("wsi ", "$ wsi ")) or line in ("wsi", "$ wsi"):
                pending = line.removeprefix("$ ")
            else:
                continue
            if pending.endswith("\\"):
                pending = pending[:-1].rstrip()
                continue
            lines.append(pending)
            pending = ""
    return lines


def _words(line: str) -> list[str]:
    return shlex.split(line, comments=True)[1:]


def _subcommand(words: list[str]) -> str | None:
    return next((w for w in words if w not in GLOBAL_FLAGS), None)


def _shown_commands(mds: list[Path]) -> list[tuple[str, str]]:
    return [
        (str(md.relative_to(REPO)), line)
        for md in mds
        for line in _command_lines(md.read_text(encoding="utf-8"))
    ]


README_COMMANDS = _shown_commands([REPO / "README.md"])
DOC_COMMANDS = _shown_commands([d for d in DOCS if d.name != "cli.md"])  # cli.md: usage lines
SHOWN = README_COMMANDS + DOC_COMMANDS
SHOWN_IDS = [f"{where}:{' '.join(line.split()[:2])}" for where, line in SHOWN]


def test_readme_shows_commands() -> None:
    assert README_COMMANDS, "no `wsi ...` lines found in README.md code blocks"


@pytest.mark.parametrize("where,line", SHOWN, ids=SHOWN_IDS)
def test_shown_command_uses_a_real_subcommand(parser, gen, where: str, line: str) -> None:
    names = list(gen.commands(parser))
    sub = _subcommand(_words(line))
    assert sub in names, f"{where}: `{line}` uses `wsi {sub}`, not one of {names}"


@pytest.mark.parametrize("where,line", SHOWN, ids=SHOWN_IDS)
def test_shown_command_parses(parser, where: str, line: str, capsys) -> None:
    try:
        parser.parse_args(_words(line))
    except SystemExit as err:
        pytest.fail(f"{where}: `{line}` does not parse: {capsys.readouterr().err.strip()} ({err})")
