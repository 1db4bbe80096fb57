"""What changed between a folder and an index: the changes ``index`` (and its dry run) carry out.

A ``FolderSync`` compares the files under a root with the documents an index holds and yields
one ``Change`` per file that needs work, loading each document only when its size or mtime
moved (the content hash then decides). It never writes: the caller applies each change as it
comes, so a large folder is streamed, not held in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragkit.documents import (
    Document,
    Limits,
    Selection,
    Skipped,
    discover,
    load_document,
    relative_path,
)
from ragkit.errors import LoadError
from ragkit.store import DocumentRow


@dataclass(frozen=True)
class Change:
    """One file that needs work: ``kind`` says what."""

    kind: str  # "added" | "changed" (doc loaded, to chunk) | "same" (touched) | "moved"
    path: str
    mtime: float
    doc: Document | None = None  # for "added" and "changed"
    old_path: str | None = None  # for "moved"


def _under(path: str, folder: str) -> bool:
    """True when ``path`` is ``folder`` itself or lies inside it."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")


class FolderSync:
    """The comparison of one folder with one index's documents."""

    def __init__(
        self,
        root: Path,
        known: dict[str, DocumentRow],
        *,
        exclude: Sequence[Path],
        max_file_bytes: int,
        follow_symlinks: bool = False,
        selection: Selection | None = None,
        limits: Limits | None = None,
        recheck: bool = False,
    ) -> None:
        self.root = root
        self.known = known
        self.limits = limits or Limits()
        # Read every file again, not only those whose size or mtime moved: the rules about what
        # to index changed, and content decides some of them (minified files).
        self.recheck = recheck
        files, passed_over = discover(
            root,
            exclude=exclude,
            max_file_bytes=max_file_bytes,
            follow_symlinks=follow_symlinks,
            selection=selection,
        )
        self.skipped = [s for s in passed_over if not s.failed]
        self.failed = [s for s in passed_over if s.failed]
        self.present = {relative_path(f, root): f for f in files}
        # A failure to look (unlistable folder, broken link) is not a deletion: what is indexed
        # under it stays.
        kept = {p for p in known if any(_under(p, s.path) for s in self.failed)}
        self.gone = {p: r for p, r in known.items() if p not in self.present and p not in kept}
        self.added: list[str] = []
        self.changed: list[str] = []
        self.moved: list[tuple[str, str]] = []
        self.warnings: list[tuple[str, str]] = []
        self.unchanged = 0

    @property
    def removed(self) -> list[str]:
        """Indexed paths with no file any more (known once ``changes`` has been run through)."""
        return sorted(self.gone)

    def summary(self) -> dict[str, Any]:
        """What this comparison found, as the matching fields of an IndexReport."""
        return {
            "added": tuple(self.added),
            "changed": tuple(self.changed),
            "removed": tuple(self.removed),
            "moved": tuple(self.moved),
            "unchanged": self.unchanged,
            "skipped": tuple(self.skipped),
            "failed": tuple(self.failed),
            "warnings": tuple(self.warnings),
        }

    def changes(
        self,
        progress: Callable[[str, int, int], None],
        on_file: Callable[[str, int], None] | None = None,
    ) -> Iterator[Change]:
        """Each file that needs work, in path order; counts and reports fill in as it goes.

        ``on_file(path, size)`` is called before each file is read.
        """
        # Renames: a new path whose bytes match a document whose path is gone.
        by_hash = {r.sha256: p for p, r in self.gone.items()}
        for done, (rel, file) in enumerate(self.present.items(), start=1):
            progress("load", done, len(self.present))
            row = self.known.get(rel)
            try:
                stat = file.stat()
                if (
                    row
                    and not self.recheck
                    and row.status == "indexed"
                    and (row.size, row.mtime)
                    == (
                        stat.st_size,
                        stat.st_mtime,
                    )
                ):
                    self.unchanged += 1  # fast path: size and mtime unchanged
                    continue
                if on_file is not None:
                    on_file(rel, stat.st_size)
                doc = load_document(file, self.root, limits=self.limits)
            except LoadError as exc:
                if exc.failed:  # the indexed version, if any, stays searchable
                    self.failed.append(Skipped(rel, exc.reason, True))
                else:  # now empty, binary...: nothing of it belongs in the index any more
                    self.skipped.append(Skipped(rel, exc.reason, False))
                    if row:
                        self.gone[rel] = row
                continue
            except OSError as exc:
                self.failed.append(Skipped(rel, f"unreadable: {exc.strerror or exc}", True))
                continue
            self.warnings.extend((rel, w) for w in doc.warnings)
            if row and row.sha256 == doc.sha256:
                # Same bytes: touched, or interrupted before all its vectors were stored (those
                # still missing are embedded with the rest).
                self.unchanged += 1
                yield Change("same", rel, doc.mtime)
                continue
            old = by_hash.pop(doc.sha256, None) if row is None else None
            if old is not None:
                del self.gone[old]
                self.moved.append((old, rel))
                yield Change("moved", rel, doc.mtime, old_path=old)
                continue
            (self.changed if row else self.added).append(rel)
            yield Change("changed" if row else "added", rel, doc.mtime, doc=doc)
