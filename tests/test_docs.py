"""The README is a front page whose two commands exist; docs/cli.md is the commands' own help,
up to date and complete; links between the documents lead somewhere."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from snapd_daemon.errors import ALL_ERRORS, StoreFull

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# documents written on other branches of the same change (issue 26's siblings), linked already
ELSEWHERE = {"integrity.md", "limits.md", "store-consistency.md",
             "kubernetes-image.md"}


def test_readme_is_a_front_page_with_its_two_commands() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    commands = [line.strip() for line in text.splitlines() if line.startswith("    scripts/")]
    assert commands[:2] == ["scripts/demo.sh", "scripts/test.sh"]
    for command in commands[:2]:
        assert os.access(ROOT / command, os.X_OK), command
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_cli_reference_is_generated_and_current() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-cli-reference.py"), "--check"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_every_command_is_in_the_reference() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import importlib

        group = importlib.import_module("gen-cli-reference").snapd_group()
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    sections = set(re.findall(r"^## snapd (\S+)$", (DOCS / "cli.md").read_text(), re.M))
    assert sections == set(group.commands)
    for name, command in group.commands.items():
        for param in command.params:
            for option in param.opts:
                if option.startswith("--"):
                    assert option in (DOCS / "cli.md").read_text(), f"snapd {name} {option}"


def test_links_between_documents_lead_somewhere() -> None:
    broken = []
    for doc in [README, *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target:
                continue
            path = (doc.parent / target).resolve()
            if not path.exists() and path.name not in ELSEWHERE:
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert broken == []


def test_every_document_is_in_the_index() -> None:
    index = (DOCS / "index.md").read_text()
    assert [d.name for d in DOCS.glob("*.md") if d.name != "index.md" and f"({d.name})" not in index] == []
    assert all(f"({name})" in index for name in ELSEWHERE)


def test_every_error_class_has_its_row_in_the_exit_code_table() -> None:
    """docs/scheduler.md's table names each daemon error class with its exit code and status."""
    rows = {tuple(cell.strip() for cell in line.split("|")[1:4]) for line in (DOCS / "scheduler.md").read_text()
            .splitlines() if line.startswith("| ")}
    missing = [cls.__name__ for cls in ALL_ERRORS if (str(cls.exit_code), cls.__name__, cls.status) not in rows
               and not (issubclass(cls, StoreFull) and cls.__name__ in (DOCS / "scheduler.md").read_text())]
    assert missing == []
