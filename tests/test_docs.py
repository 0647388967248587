"""The documents say what the tree holds: what comments cite exists, and every file the
README and docs/ name is in the repository (a rename that leaves them behind fails here)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARCHITECTURE = REPO / "docs" / "architecture.md"
DOCUMENTS = ("README.md", "docs/architecture.md", "docs/live-protocol.md")
# A citation of a section, possibly broken over two comment lines:
# "(docs/architecture.md, Measured constraints)".
CITATION = re.compile(r"docs/architecture\.md,\s*(?:(?:#|\*)\s*)?([A-Z][a-z]+(?:\s+[a-z]+)*)")
NAMED_FILE = re.compile(r"`([\w./-]+\.(?:py|pyi|c|md|js|html|css|yml|yaml|toml))`")


def tracked_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return listed.stdout.split()


def sources() -> list[Path]:
    return [
        REPO / name
        for name in tracked_files()
        if name.endswith((".py", ".pyi", ".c", ".html", ".js"))
        and (REPO / name).exists()
        and REPO / name != Path(__file__).resolve()
    ]


def test_every_cited_section_of_the_architecture_exists():
    headings = {
        line.lstrip("#").strip()
        for line in ARCHITECTURE.read_text().splitlines()
        if line.startswith("## ")
    }
    cited = {}
    for path in sources():
        for match in CITATION.finditer(path.read_text(errors="replace")):
            cited.setdefault(" ".join(match.group(1).split()), []).append(
                str(path.relative_to(REPO))
            )
    assert cited, "no comment cites docs/architecture.md"
    missing = {section: where for section, where in cited.items() if section not in headings}
    assert not missing, f"sections cited but not in docs/architecture.md: {missing}"


def test_no_comment_cites_a_document_outside_the_repository():
    citing = [str(path.relative_to(REPO)) for path in sources() if "DESIGN.md" in path.read_text()]
    assert citing == []


def test_every_file_the_documents_name_exists():
    files = tracked_files()
    missing = {}
    for document in DOCUMENTS:
        for name in set(NAMED_FILE.findall((REPO / document).read_text())):
            if not any(each == name or each.endswith("/" + name) for each in files):
                missing.setdefault(document, []).append(name)
    assert not missing, f"files named in the documents but not in the tree: {missing}"
