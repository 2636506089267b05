"""The documentation's shape, checked without building it (`make docs` builds the site strictly):
README stays a front door, every page of docs/ is linked from it and in the site's nav, and every
relative link of the markdown files resolves to a file of the repository, as on GitHub."""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import REPO

#: the markdown the site is built from (mkdocs.yml; docs/hooks/repo_pages.py adds the files outside
#: docs/)
OUTSIDE_DOCS = ("README.md", "CHANGELOG.md", "config/README.md", "benchmarks/README.md")
PAGES = sorted([*(REPO / "docs").glob("*.md"), *(REPO / name for name in OUTSIDE_DOCS)])
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def relative_links(page):
    for target in LINK.findall(page.read_text()):
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target) and not target.startswith("#"):
            yield target.split("#")[0]


def test_readme_is_a_front_door_that_links_every_docs_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    linked = {target for target in relative_links(REPO / "README.md")}
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"docs/{page.name}" in linked, f"README links no docs/{page.name}"


def test_every_docs_page_is_in_the_sites_nav():
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    in_nav = {next(iter(entry.values())) for entry in nav}
    assert {page.name for page in (REPO / "docs").glob("*.md")} <= in_nav


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_leads_to_a_file_of_the_repository(page):
    broken = [
        target for target in relative_links(page) if not (page.parent / target).resolve().exists()
    ]
    assert not broken, f"{page.relative_to(REPO)}: {broken}"
