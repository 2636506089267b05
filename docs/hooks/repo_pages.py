"""mkdocs hook: the site's pages also include the markdown files outside docs/ that the docs link to
(README.md as the home page, config/README.md, benchmarks/README.md, CHANGELOG.md), and every link
stays written as it works on GitHub, relative to the file in the repository: here it is rewritten
to the page that file became. A link to a repository file that is no page is left as it is, so
``mkdocs build --strict`` fails on it like on any broken link."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

#: a file of the repository outside docs/ -> the site page it becomes
PAGES_OUTSIDE_DOCS = {
    "README.md": "index.md",
    "config/README.md": "configuration.md",
    "benchmarks/README.md": "benchmarks.md",
    "CHANGELOG.md": "changelog.md",
}
SOURCES = {page: source for source, page in PAGES_OUTSIDE_DOCS.items()}
#: a markdown link or image target: ](target) or ](target "title")
LINK = re.compile(r"\]\((?P<target>[^)\s]+)(?P<rest>(?:\s+\"[^\"]*\")?\))")


def _repo_and_docs(config) -> tuple[Path, str]:
    repo = Path(config.config_file_path).parent.resolve()
    return repo, Path(config.docs_dir).resolve().relative_to(repo).as_posix()


def on_files(files, config):
    repo, _ = _repo_and_docs(config)
    for source, page in PAGES_OUTSIDE_DOCS.items():
        files.append(File.generated(config, page, abs_src_path=str(repo / source)))
    return files


def on_page_markdown(markdown, page, config, files):
    _, docs = _repo_and_docs(config)
    site_path = page.file.src_uri
    repo_path = SOURCES.get(site_path, f"{docs}/{site_path}")

    def to_site(match: re.Match) -> str:
        target = match["target"]
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return match[0]  # another site, an anchor on this page, an absolute path
        path, hash_, anchor = target.partition("#")
        in_repo = posixpath.normpath(posixpath.join(posixpath.dirname(repo_path), path))
        if in_repo in PAGES_OUTSIDE_DOCS:
            in_site = PAGES_OUTSIDE_DOCS[in_repo]
        elif in_repo.startswith(f"{docs}/"):
            in_site = in_repo[len(docs) + 1 :]
        else:
            return match[0]
        relative = posixpath.relpath(in_site, posixpath.dirname(site_path) or ".")
        return f"]({relative}{hash_}{anchor}{match['rest']}"

    return LINK.sub(to_site, markdown)
