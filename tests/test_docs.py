"""The repository explains itself: what the code, the docs, the README and the deployment files
point a reader at is in the repository. Specs written outside it (DESIGN.md, PROTOCOL.md, a
shared folder beside the clone) are not there for a user, so nothing may send one to them."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEARCHED = ("src", "docs", "deploy", "README.md")
# Third-party files shipped as they came (Swagger UI): not ours to word.
VENDORED = ROOT / "src" / "bcmanager" / "static" / "swagger-ui"
OUTSIDE = re.compile(r"DESIGN\.md|PROTOCOL\.md|\.\./shared")
# A Markdown link: [text](target), the target up to a space, '#' or ')'.
LINK = re.compile(r"\]\(([^)#\s]*)(?:#[^)\s]*)?\)")


def text_files() -> list[Path]:
    found = []
    for name in SEARCHED:
        top = ROOT / name
        for path in [top] if top.is_file() else sorted(top.rglob("*")):
            if path.is_file() and VENDORED not in path.parents and "egg-info" not in str(path):
                try:
                    path.read_text(encoding="utf-8")
                except UnicodeDecodeError:
                    continue  # images
                found.append(path)
    return found


def test_nothing_points_at_a_file_outside_the_repository() -> None:
    files = text_files()
    assert any(path.name == "design.md" for path in files)  # the walk reaches docs/
    offending = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert offending == []


def test_every_relative_link_resolves() -> None:
    broken = []
    for path in text_files():
        if path.suffix != ".md":
            continue
        for target in LINK.findall(path.read_text(encoding="utf-8")):
            if not target or re.match(r"[a-z]+:", target):
                continue  # an anchor on the same page, or a URL
            if not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert broken == []


def test_the_docs_name_the_extensions_and_the_rules() -> None:
    protocol = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    for route in ("/assignwork", "/keepalive", "/completed", "/heartbeat"):
        assert f"## GET {route}" in protocol
    for extension in ("STOPPED", "GET /status", "GET /ready", "GET /metrics", "POST /retry"):
        assert extension in protocol
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    for heading in ("## Invariants", "## How a change is committed", "## The failure policy"):
        assert heading in design
