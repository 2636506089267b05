"""What is under a dataset root, and a fingerprint of it that changes exactly when the images do.

Standard library only: the workflow computes the fingerprint while it plans (the ``source``
param of ``build_manifest``), so any added, removed, renamed or edited file at any depth reruns the
manifest and everything after it, and a file that was only touched, copied back or moved in place
with the same bytes reruns nothing.

The fingerprint is a sha256 over one line per entry the scan sees: each class folder, each image
candidate with the sha256 of its bytes, each other file with the reason it is rejected. Hashing
26,000 files on every run would cost seconds to minutes on a shared filesystem, so the sha256 of a
file is kept in a stat cache (``StatCache``), keyed like git's index by the file's size, mtime,
ctime and inode: a file whose stat is unchanged is not read again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from tracinflow.data import DataError

#: the ``source`` param of a folder the workflow writes itself (the demo's), whose edits by hand are
#: not looked for, like any other output's
NOT_WATCHED = "not watched: written by the workflow"
#: a candidate file that could not be read (its permissions, say): no sha256
UNREADABLE = "unreadable"
#: entries changed less than this many seconds before they were hashed are not cached: a second
#: change within the same timestamp tick would keep the stat (git's "racily clean" files)
RACY_SECONDS = 5.0


@dataclass(frozen=True)
class FolderListing:
    """The entries of an ImageFolder root as the scan reads them.

    ``classes``: the class folder names, sorted; ``candidates``: ``(relative path, class folder)``
    of the files with an image extension at any depth under a class folder; ``rejected``:
    ``(relative path, reason)`` of every other file, which no image is read from.
    """

    classes: list[str]
    candidates: list[tuple[str, str]]
    rejected: list[tuple[str, str]]
    excluded: list[str] = field(default_factory=list)


def _outside_reason(target: Path) -> str:
    return (
        f"a symbolic link to '{target}', outside the dataset root: only files under dataset.root "
        f"are read (copy the file in, or point dataset.root higher)"
    )


def _suffix(name: str) -> str:
    """``Path(name).suffix`` without building a Path (a leading or trailing dot is no suffix)."""
    at = name.rfind(".")
    return name[at:] if 0 < at < len(name) - 1 else ""


def _files_under(folder: str, parts: tuple[str, ...]):
    """``(path parts under the root, absolute path, is a symbolic link)`` of every file at any
    depth under ``folder``, as ``Path.rglob`` walks (a link to a file is a file; a linked folder
    is not entered), from ``os.scandir``'s entries, which carry their type: no stat per file."""
    with os.scandir(folder) as entries:
        entries = list(entries)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _files_under(entry.path, (*parts, entry.name))
        elif entry.is_file():
            yield (*parts, entry.name), entry.path, entry.is_symlink()


def list_image_folder(
    root, extensions: Iterable[str], exclude: Iterable[str] = ()
) -> FolderListing:
    """Class folders and candidate files under ``root``, and the files that cannot be candidates.

    Hidden entries of the root's first level are skipped, and so are the class folders named in
    ``exclude`` (``dataset.exclude_classes``). A symbolic link to a file outside ``root`` is
    rejected, not followed. Files come in path order (by path component).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root '{root}' is not a folder; set dataset.root in the config")
    allowed = {ext.lower() for ext in extensions}
    skipped = set(exclude)
    inside = root.resolve()
    classes, candidates, rejected, excluded = [], [], [], []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        relative = entry.relative_to(root).as_posix()
        if entry.is_file():
            rejected.append((relative, "not inside a class folder (<root>/<class>/<image>)"))
            continue
        if not entry.is_dir():
            continue
        if entry.name in skipped:
            excluded.append(entry.name)
            continue
        classes.append(entry.name)
        linked_folder = entry.is_symlink()
        for parts, path, is_link in sorted(_files_under(str(entry), (entry.name,))):
            relative = "/".join(parts)
            # only a link (the file, or its class folder) can lead outside: nothing else is resolved
            target = Path(path).resolve() if is_link or linked_folder else None
            if target is not None and not target.is_relative_to(inside):
                rejected.append((relative, _outside_reason(target)))
            elif _suffix(parts[-1]).lower() in allowed:
                candidates.append((relative, entry.name))
            else:
                rejected.append(
                    (
                        relative,
                        f"extension '{_suffix(parts[-1])}' is not an image extension "
                        f"{sorted(allowed)}",
                    )
                )
    return FolderListing(classes, candidates, rejected, excluded)


def file_sha256(path) -> str:
    """The sha256 of a file's bytes, or :data:`UNREADABLE`."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return UNREADABLE
    return digest.hexdigest()


def source_digest(listing: FolderListing, sha256: Mapping[str, str]) -> str:
    """The fingerprint of a listing whose candidates have the given sha256 (by relative path):
    one JSON line per class folder, candidate and rejected file, hashed."""
    digest = hashlib.sha256()
    lines = [["class", name] for name in listing.classes]
    lines += [["image", path, sha256[path]] for path, _ in listing.candidates]
    lines += [["other", path, reason] for path, reason in listing.rejected]
    for line in lines:
        digest.update(json.dumps(line, ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()


def source_record(listing: FolderListing, sha256: Mapping[str, str]) -> dict:
    """What ``source.json`` keeps of a listing: its fingerprint, the class folders, the sha256 of
    every candidate and the reason of every other file (what a later run names as changed)."""
    return {
        "digest": source_digest(listing, sha256),
        "classes": list(listing.classes),
        "excluded": list(listing.excluded),
        "images": {path: sha256[path] for path, _ in listing.candidates},
        "other": dict(listing.rejected),
    }


@dataclass
class SourceChanges:
    """The files that differ between two source records."""

    added: list[str]
    removed: list[str]
    changed: list[str]
    classes_added: list[str]
    classes_removed: list[str]

    def __bool__(self) -> bool:
        return any(
            (self.added, self.removed, self.changed, self.classes_added, self.classes_removed)
        )

    def describe(self, shown: int = 5) -> str:
        """``2 added (a.png, b.png), 1 changed (c.png)``: the counts, with the first few names."""

        def part(one: str, many: str, names: list[str]) -> str | None:
            if not names:
                return None
            more = f" and {len(names) - shown} more" if len(names) > shown else ""
            # JSON quoting shows a newline or tab in a name as \n, \t
            quoted = ", ".join(json.dumps(name, ensure_ascii=False) for name in names[:shown])
            return f"{len(names)} {one if len(names) == 1 else many} ({quoted}{more})"

        parts = [
            part("class folder added", "class folders added", self.classes_added),
            part("class folder removed", "class folders removed", self.classes_removed),
            part("file added", "files added", self.added),
            part("file removed", "files removed", self.removed),
            part("file with other bytes", "files with other bytes", self.changed),
        ]
        return ", ".join(p for p in parts if p)


def source_changes(before: Mapping, after: Mapping) -> SourceChanges:
    """What differs between two :func:`source_record` s: added and removed files (a rename is
    one of each), files whose bytes differ, class folders added and removed."""
    old = {**dict.fromkeys(before.get("other", {})), **before.get("images", {})}
    new = {**dict.fromkeys(after.get("other", {})), **after.get("images", {})}
    return SourceChanges(
        added=sorted(set(new) - set(old)),
        removed=sorted(set(old) - set(new)),
        changed=sorted(p for p in set(old) & set(new) if old[p] != new[p]),
        classes_added=sorted(set(after.get("classes", [])) - set(before.get("classes", []))),
        classes_removed=sorted(set(before.get("classes", [])) - set(after.get("classes", []))),
    )


def _stat_key(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


class StatCache:
    """The sha256 of files by their stat: a file whose size, mtime, ctime and inode are those
    recorded is not read again (as git's index does). Kept in one JSON file, written atomically
    when it learned something; a missing or damaged file is an empty cache. Entries changed within
    :data:`RACY_SECONDS` of being hashed are not kept (the stat of a second change in the same
    timestamp tick could equal the first's)."""

    def __init__(self, path=None):
        self.path = Path(path) if path else None
        self.entries: dict[str, list] = {}
        self.hashed = 0
        if self.path and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())["entries"]
            except (OSError, ValueError, KeyError, TypeError):
                self.entries = {}
        self._dirty = False

    def sha256(self, root: str, relative: str) -> str:
        path = os.path.join(root, relative)
        try:
            stat = os.stat(path)
        except OSError:
            return UNREADABLE
        key = _stat_key(stat)
        known = self.entries.get(relative)
        if known and known[:-1] == key:
            return known[-1]
        now = time.time_ns()
        sha = file_sha256(path)
        self.hashed += 1
        newest = max(stat.st_mtime_ns, stat.st_ctime_ns)
        if sha != UNREADABLE and now - newest > RACY_SECONDS * 1e9:
            self.entries[relative] = [*key, sha]
            self._dirty = True
        elif relative in self.entries:
            del self.entries[relative]
            self._dirty = True
        return sha

    def keep_only(self, paths: Iterable[str]) -> None:
        keep = set(paths)
        stale = [path for path in self.entries if path not in keep]
        for path in stale:
            del self.entries[path]
        self._dirty = self._dirty or bool(stale)

    def save(self) -> None:
        if not (self.path and self._dirty):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"entries": self.entries}))
        os.replace(tmp, self.path)
        self._dirty = False


@dataclass
class Source:
    """A dataset root as it is now: its listing, the sha256 of each candidate, the fingerprint."""

    listing: FolderListing
    sha256: dict[str, str]
    hashed: int

    @cached_property
    def digest(self) -> str:
        return source_digest(self.listing, self.sha256)

    def record(self) -> dict:
        return {**source_record(self.listing, self.sha256), "digest": self.digest}

    def changes_since(self, recorded) -> SourceChanges | None:
        """What differs from the :func:`source_record` in the file ``recorded`` (``source.json``):
        ``None`` when that file is missing or has this fingerprint."""
        try:
            before = json.loads(Path(recorded).read_text())
        except (OSError, ValueError):
            return None
        if before.get("digest") == self.digest:
            return None
        return source_changes(before, self.record())


def read_source(root, extensions: Iterable[str], exclude: Iterable[str] = (), cache=None) -> Source:
    """List ``root`` and hash its candidates through the stat cache at ``cache`` (a path, or
    ``None``: hash every file). ``hashed`` counts the files read."""
    root = Path(root)
    listing = list_image_folder(root, extensions, exclude)
    stats = StatCache(cache)
    sha256 = {path: stats.sha256(str(root), path) for path, _ in listing.candidates}
    stats.keep_only(sha256)
    try:
        stats.save()
    except OSError:
        pass  # a read-only working directory: the next run hashes again, nothing else changes
    return Source(listing, sha256, stats.hashed)


def stat_cache_file(folder, root) -> Path:
    """The stat cache of one dataset root inside ``folder`` (one file per resolved root)."""
    key = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:16]
    return Path(folder) / f"source-{key}.json"
