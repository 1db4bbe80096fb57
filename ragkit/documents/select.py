"""Which files to index: ``--include``/``--exclude`` globs, ``.ragkitignore``, generated assets.

Patterns use gitignore syntax: a pattern without a slash matches a name at any depth, one with a
slash is anchored at the root (a leading ``/`` anchors a bare name), ``*`` stays within one path
component and ``**`` crosses them, a trailing ``/`` matches folders only, and in
``.ragkitignore`` a leading ``!`` re-includes what an earlier line excluded (the last match wins).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

IGNORE_FILE = ".ragkitignore"

# Built or vendored files that only add noise to a documentation index: file-name patterns and
# the reason each is skipped for.
_GENERATED_NAMES: tuple[tuple[str, str], ...] = (
    ("*.min.js", "minified asset"),
    ("*.min.css", "minified asset"),
    ("*-min.js", "minified asset"),
    ("*.bundle.js", "bundled asset"),
    ("searchindex.js", "generated search index"),
    ("search_index.json", "generated search index"),
    ("jquery*.js", "vendored library"),
    ("underscore*.js", "vendored library"),
)
# Folders a Sphinx build writes beside its HTML: copies of the sources and the theme's assets.
_SPHINX_FOLDERS = {
    "_sources": "Sphinx copies of the source files",
    "_static": "Sphinx theme assets",
}
_SPHINX_MARKERS = ("searchindex.js", "objects.inv")
# A line this long in a code file means minified or generated output, not something a person wrote.
LONG_LINE_CHARS = 1000


@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool
    source: str  # shown in the skip reason


def _glob_regex(pattern: str) -> str:
    """The regular expression for one gitignore-style glob (without anchoring)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and (close := pattern.find("]", i + 2)) > 0:
            body = pattern[i + 1 : close]
            if body[:1] in ("!", "^"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = close + 1
        elif c == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def _rule(line: str, source: str) -> _Rule | None:
    """One gitignore line as a rule; None for blank lines and comments."""
    if not line.endswith("\\ "):
        line = line.rstrip()
    if not line or line.startswith("#"):
        return None
    negate = line.startswith("!")
    if negate or line.startswith(("\\!", "\\#")):
        line = line[1:]
    dir_only = line.endswith("/")
    line = line.rstrip("/")
    if not line:
        return None
    anchored = "/" in line
    body = _glob_regex(line.lstrip("/"))
    regex = re.compile(("^" if anchored else "^(?:.*/)?") + body + "$")
    return _Rule(regex, negate, dir_only, source)


def _matches(rule: _Rule, rel: str, is_dir: bool) -> bool:
    return (is_dir or not rule.dir_only) and rule.regex.match(rel) is not None


class Selection:
    """The rules that pick which files under a root are indexed; ``reason`` says why one is not."""

    def __init__(
        self,
        *,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        ignore_lines: Sequence[str] = (),
        skip_generated: bool = True,
    ) -> None:
        self.include = tuple(p for p in include if p)
        self.exclude = tuple(p for p in exclude if p)
        self.skip_generated = skip_generated
        rules = [_rule(line, f"{IGNORE_FILE} line {n}") for n, line in enumerate(ignore_lines, 1)]
        rules += [_rule(p, f"--exclude {p!r}") for p in self.exclude]
        self._ignore = [r for r in rules if r is not None]
        self._include = [r for r in (_rule(p, "--include") for p in self.include) if r]
        generated = ((_rule(p, why), why) for p, why in _GENERATED_NAMES)
        self._generated = [(r, why) for r, why in generated if r is not None]

    @classmethod
    def for_root(
        cls,
        root: Path,
        *,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        skip_generated: bool = True,
    ) -> Selection:
        """The selection for a folder, with its ``.ragkitignore`` when it has one."""
        ignore = Path(root) / IGNORE_FILE
        lines: list[str] = []
        if ignore.is_file():
            lines = ignore.read_text(encoding="utf-8", errors="replace").splitlines()
        return cls(
            include=include, exclude=exclude, ignore_lines=lines, skip_generated=skip_generated
        )

    def reason(self, rel: str, *, is_dir: bool) -> str | None:
        """Why the file or folder at ``rel`` (POSIX, relative to the root) is left out, or None."""
        for rule in reversed(self._ignore):  # the last matching line decides
            if _matches(rule, rel, is_dir):
                return None if rule.negate else f"excluded by {rule.source}"
        if is_dir:
            return None
        if self._include and not any(_matches(r, rel, False) for r in self._include):
            return "not matched by --include"
        if self.skip_generated:
            for rule, why in self._generated:
                if _matches(rule, rel, False):
                    return f"{why} (--no-skip-generated indexes it)"
        return None

    def folder_reason(self, folder: Path, name: str) -> str | None:
        """Why a Sphinx build's ``_sources``/``_static`` folder inside ``folder`` is left out."""
        if not self.skip_generated or name not in _SPHINX_FOLDERS:
            return None
        if any((folder / marker).is_file() for marker in _SPHINX_MARKERS):
            return f"{_SPHINX_FOLDERS[name]} (--no-skip-generated indexes it)"
        return None
