"""Walking a folder: which files to load, and which were passed over and why."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from ragkit.documents.document import Skipped, kind_of, unsupported
from ragkit.documents.select import Selection
from ragkit.errors import LoadError

DEFAULT_MAX_FILE_BYTES = 50 * 1024 * 1024
HIDDEN = "hidden"  # the skip reason for names starting with "."

# Tool and dependency folders that are never documents; walked past silently.
_IGNORED_DIRS = frozenset({"__pycache__", "node_modules", "__pypackages__", "site-packages"})


def relative_path(path: Path, root: Path) -> str:
    """``path`` as a POSIX string relative to ``root``; the file name when root is the file."""
    if path == root:
        return path.name
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.resolve().relative_to(root.resolve()).as_posix()


def _inside(real: str, real_root: str) -> bool:
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def discover(
    root: Path,
    *,
    exclude: Sequence[Path] = (),
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    follow_symlinks: bool = False,
    selection: Selection | None = None,
) -> tuple[list[Path], list[Skipped]]:
    """Files under ``root`` (a folder or one file) to load, in sorted order, and those skipped.

    ``exclude`` names folders never to walk (the index's own). A symlink whose target lies
    outside ``root`` is skipped unless ``follow_symlinks``; a link's type is its target's.
    """
    root = Path(root)
    excluded = {os.path.realpath(p) for p in exclude}
    files: list[Path] = []
    skipped: list[Skipped] = []
    # Real paths already walked or taken, so symlinks never loop or load one thing twice.
    seen: dict[str, str] = {}

    def consider_file(path: Path, rel: str, real: str, st: os.stat_result, link: bool) -> None:
        # A link is read as what it points at: `keys.txt -> openai.env` is no text file.
        kind = kind_of(real if link else path)
        why = selection.reason(rel, is_dir=False) if selection is not None else None
        if kind is None:
            skipped.append(Skipped(rel, unsupported(real if link else path), failed=False))
        elif why is not None:
            skipped.append(Skipped(rel, why, failed=False))
        elif not stat.S_ISREG(st.st_mode):
            skipped.append(Skipped(rel, "not a regular file", failed=False))
        elif st.st_size > max_file_bytes:
            reason = f"larger than {_megabytes(max_file_bytes)} (--max-file-mb)"
            skipped.append(Skipped(rel, reason, failed=False))
        elif real in seen:
            skipped.append(Skipped(rel, f"same file as {seen[real]}", failed=False))
        elif real not in excluded:
            seen[real] = rel
            files.append(path)

    def walk(folder: Path, folder_rel: str, real_folder: str, ancestors: frozenset[str]) -> None:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            skipped.append(Skipped(folder_rel, _os_reason(exc), failed=True))
            return
        for entry in entries:
            path = folder / entry.name
            rel = f"{folder_rel}/{entry.name}" if folder_rel else entry.name
            if entry.name.startswith("."):
                skipped.append(Skipped(rel, HIDDEN, failed=False))
                continue
            try:
                st = entry.stat()  # follows symlinks
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    skipped.append(Skipped(rel, "symlink loop", failed=False))
                elif entry.is_symlink() and exc.errno == errno.ENOENT:
                    wanted = kind_of(path) is not None
                    skipped.append(Skipped(rel, "broken symlink", failed=wanted))
                else:
                    skipped.append(Skipped(rel, _os_reason(exc), failed=True))
                continue
            # realpath costs a syscall per path component, so only symlinks pay for it.
            link = entry.is_symlink()
            real = os.path.realpath(path) if link else os.path.join(real_folder, entry.name)
            if link and not follow_symlinks and not _inside(real, real_root):
                reason = "points outside the folder (--follow-symlinks reads it)"
                skipped.append(Skipped(rel, reason, failed=False))
            elif not stat.S_ISDIR(st.st_mode):
                consider_file(path, rel, real, st, link)
            elif entry.name in _IGNORED_DIRS or entry.name.endswith(".egg-info"):
                continue
            elif real in excluded or os.path.isfile(os.path.join(real, "pyvenv.cfg")):
                continue  # the index folder, or a virtualenv under any name
            elif real in ancestors:
                skipped.append(Skipped(rel, "symlink loop", failed=False))
            elif real in seen:
                skipped.append(Skipped(rel, f"same folder as {seen[real]}", failed=False))
            elif selection is not None and (
                why := selection.reason(rel, is_dir=True)
                or selection.folder_reason(folder, entry.name)
            ):
                skipped.append(Skipped(rel + "/", why, failed=False))
            else:
                seen[real] = rel
                walk(path, rel, real, ancestors | {real})

    try:
        root_stat = root.stat()
    except FileNotFoundError as exc:
        raise LoadError(f"{root} does not exist; check the path", failed=True) from exc
    except OSError as exc:
        raise LoadError(f"cannot read {root} ({_os_reason(exc)}); check the path") from exc
    real_root = os.path.realpath(root)
    if stat.S_ISDIR(root_stat.st_mode):
        seen[real_root] = "."
        walk(root, "", real_root, frozenset({real_root}))
    else:
        # A file named on the command line is read wherever its link points: the user chose it.
        consider_file(root, relative_path(root, root), real_root, root_stat, root.is_symlink())
    return files, skipped


def _megabytes(n: int) -> str:
    mib = n / (1024 * 1024)
    return f"{mib:g} MB" if mib >= 1 else f"{n} bytes"


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    return f"unreadable: {exc.strerror or exc}"
