"""Where an index lives, and opening it there: a folder (SQLite + FAISS) or PostgreSQL.

The ``store`` setting chooses: unset, an index is the folder ``index_dir/index`` as always;
a ``postgresql://`` URL, it is the schema ``ragkit_<index>`` in that database, so one database
holds many indexes. Callers get an ``IndexStore`` either way.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ragkit.errors import ConfigError
from ragkit.store.protocol import IndexStore

SCHEMES = ("postgresql", "postgres")


def check_store_url(url: str | None) -> None:
    """Refuse a ``store`` value that is not a PostgreSQL URL (unset means the SQLite folder)."""
    if url and urlsplit(url).scheme not in SCHEMES:
        raise ConfigError(
            f"store {redact(url)!r} is not a postgresql:// URL: pass one such as"
            " postgresql://user@host/db, or leave --store unset for the index folder"
        )


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and status output."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


@dataclass(frozen=True)
class Address:
    """One index's place: the folder ``folder``, or index ``name`` in the database at ``url``."""

    name: str
    folder: Path
    url: str | None = None

    def __str__(self) -> str:
        if self.url:
            return f"{redact(self.url)} (index {self.name})"
        return str(self.folder)

    @property
    def flags(self) -> str:
        """The CLI flags that name this index (for messages that say what to run)."""
        if self.url:
            return f" --store {redact(self.url)} --index {self.name}"
        from ragkit.store.schema import index_flags

        return index_flags(self.folder)

    def exists(self) -> bool:
        """True when an index is there."""
        if self.url:
            from ragkit.store.postgres import PostgresStore

            return PostgresStore.exists(self.url, self.name)
        from ragkit.store.sqlite import Store

        return Store.exists(self.folder)

    def open(self) -> IndexStore:
        """Open the index; IndexNotFoundError when there is none."""
        if self.url:
            from ragkit.store.postgres import PostgresStore

            return PostgresStore.open(self.url, self.name)
        from ragkit.store.sqlite import Store

        return Store.open(self.folder)

    def create(self, *, embedder: str, model: str, dimension: int) -> IndexStore:
        """Make a new, empty index for vectors of the given embedder."""
        if self.url:
            from ragkit.store.postgres import PostgresStore

            return PostgresStore.create(
                self.url, self.name, embedder=embedder, model=model, dimension=dimension
            )
        from ragkit.store.sqlite import Store

        return Store.create(self.folder, embedder=embedder, model=model, dimension=dimension)

    def drop(self) -> None:
        """Delete the index and everything in it (for caches that are rebuilt from nothing)."""
        if self.url:
            from ragkit.store.postgres import PostgresStore

            PostgresStore.drop(self.url, self.name)
        elif self.folder.exists():
            shutil.rmtree(self.folder)
