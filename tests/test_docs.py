"""The manual and the record: README.md stays a manual, and every results table in docs/ is a file that a report
command writes from the runs kept in experiments/results/, never a hand-typed copy.

docs/results/index.md lists each included table with the command that writes it; the slow tests run each command
(``--report-only``: nothing trains) into a scratch results directory that reads the committed runs, and compare what
it writes with the committed files.  mkdocs itself is not needed here (CI runs ``mkdocs build --strict``).
"""

from __future__ import annotations

import filecmp
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RESULTS = "experiments/results/paper-full"
INDEX = DOCS / "results" / "index.md"
README_MAX_LINES = 450

INCLUDE = re.compile(r'^\s*--8<--\s+"([^"]+)"\s*$', re.MULTILINE)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
COMMAND_ROW = re.compile(r"^\|\s*`([^`]+/table\.md)`\s*\|.*\|\s*`(python experiments/paper\.py [^`]+)`\s*\|\s*$",
                         re.MULTILINE)


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where link-like text is not a link."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def includes() -> dict[str, list[Path]]:
    """Every file a docs page includes (pymdownx.snippets, paths from the repository root) -> the pages."""
    found: dict[str, list[Path]] = {}
    for page in sorted(DOCS.rglob("*.md")):
        for target in INCLUDE.findall(page.read_text()):
            found.setdefault(re.sub(r"(:-?\d*)+$", "", target), []).append(page)
    return found


def report_commands() -> dict[str, list[str]]:
    """The table of docs/results/index.md: table path (under RESULTS) -> the command that writes it."""
    return {f"{RESULTS}/{table}": shlex.split(command) for table, command in COMMAND_ROW.findall(INDEX.read_text())}


def slug(heading: str) -> str:
    """The anchor of a heading, as Python-Markdown's toc and GitHub make it for these (ASCII) headings."""
    text = re.sub(r"[^\w\s-]", "", heading).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    return {slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.MULTILINE)}


def test_readme_is_a_manual_of_at_most_450_lines():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move details into docs/"


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(page: Path):
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {os.path.relpath(file, ROOT)}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading '{anchor}' in {os.path.relpath(file, ROOT)}")
    assert not broken, f"{os.path.relpath(page, ROOT)}: " + "; ".join(broken)


def test_every_included_table_is_written_by_a_listed_report_command():
    commands = report_commands()
    assert commands, f"no report commands found in {INDEX.relative_to(ROOT)}"
    for path, pages in includes().items():
        where = ", ".join(str(p.relative_to(ROOT)) for p in pages)
        assert (ROOT / path).is_file(), f"{where} includes {path}, which does not exist"
        assert path in commands, (f"{where} includes {path}, but {INDEX.relative_to(ROOT)} names no report command "
                                  "that writes it")
    for path, argv in commands.items():
        assert argv[:2] == ["python", "experiments/paper.py"], argv
        assert "--report-only" in argv and argv[argv.index("--results-dir") + 1] == RESULTS, argv
        assert path == f"{RESULTS}/{argv[2]}/table.md", f"{path} is not where `{shlex.join(argv)}` writes its table"


def test_no_results_table_is_typed_into_the_readme():
    """The README holds no measured numbers in a table: TA/AA pairs like '85.6 / 94.4' or '85.6/94.4' in a row."""
    rows = [line for line in (ROOT / "README.md").read_text().splitlines()
            if line.startswith("|") and re.search(r"\d+\.\d\s*/\s*\d+\.\d", line)]
    assert not rows, rows


@pytest.mark.slow
@pytest.mark.parametrize("table", sorted(report_commands()), ids=lambda t: t.split("/")[-2])
def test_committed_table_is_what_its_report_writes(table: str, tmp_path: Path):
    argv = report_commands()[table]
    target = argv[2]
    (tmp_path / "runs").symlink_to(ROOT / RESULTS / "runs", target_is_directory=True)
    args = list(argv[1:])
    args[args.index("--results-dir") + 1] = str(tmp_path)
    done = subprocess.run([sys.executable, *args, "--no-progress"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    committed, written = ROOT / RESULTS / target, tmp_path / target
    tables = sorted(p.relative_to(committed) for p in committed.rglob("*") if p.suffix in (".md", ".csv"))
    assert (committed / "table.md").is_file()
    regenerated = sorted(p.relative_to(written) for p in written.rglob("*") if p.suffix in (".md", ".csv"))
    assert tables == regenerated, f"{target}: committed {tables}, the report writes {regenerated}"
    stale = [str(t) for t in tables if not filecmp.cmp(committed / t, written / t, shallow=False)]
    assert not stale, (f"{', '.join(stale)} under {RESULTS}/{target} differ from what `{shlex.join(argv)}` writes: "
                       "rerun it and commit the tables")
