"""The front door stays short and every link in the documentation leads somewhere."""

from __future__ import annotations

import re

import pytest

from tests.helpers import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), REPO / "alerts" / "runbooks" / "README.md"]
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def test_readme_is_at_most_20_kb():
    assert len((REPO / "README.md").read_bytes()) <= 20_000


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc):
    missing = [target for target, _ in LINK.findall(doc.read_text())
               if not target.startswith(("http://", "https://", "mailto:")) and not (doc.parent / target).exists()]
    assert missing == []
