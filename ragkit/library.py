"""``ragkit.open()``: an index held open by an app, searched and asked many times from any thread.

The module-level verbs (``ragkit.search`` and friends) open an ``Index``, make one call and
close it. An app that queries often keeps one open instead: the embedder (tokenizer and
weights), the chat model and the verified FAISS index are loaded once, and a query does only
the query's work.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ragkit import components, maintenance, pipeline
from ragkit.config import Overrides, Settings
from ragkit.errors import ConfigError
from ragkit.retriever import check_query
from ragkit.store.bm25 import KeywordMemory
from ragkit.store.protocol import IndexStore
from ragkit.store.sqlite import Store

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ragkit.answerer import Answer
    from ragkit.chat import ChatModel
    from ragkit.conversation import Turn
    from ragkit.embedders import Embedder
    from ragkit.maintenance import IndexStatus
    from ragkit.pipeline import IndexReport, Progress
    from ragkit.retriever import Hit

T = TypeVar("T")

# Settings an open Index is bound to: a call cannot switch to another index or embedder.
_FIXED = ("index", "index_dir", "embedder")
_PER_CALL_KEPT = 64  # distinct per-call overrides whose checked Settings an Index keeps


class Index:
    """One index held open: ``search``, ``ask``, their async forms, ``index`` and ``status``.

    Thread safety: ``search``, ``ask``, ``asearch``, ``aask`` and ``status`` may run from many
    threads at once (each thread reads through its own SQLite connection; the embedder, chat
    model and FAISS index are shared read-only). ``index`` may run while other threads search:
    it writes through a connection of its own under the index's write lock, and searches see
    each commit as it lands. ``close`` must not race with calls still running.

    Another process's writes (a running ``ragkit index``) are seen without reopening: each
    query asks SQLite whether anything was committed (``PRAGMA data_version``, no table read),
    and only then re-reads the manifest; the FAISS file is reloaded and checked against SQLite
    when its generation changed, which a writer bumps when its run completes. Until then, dense
    search ranks with the previous vectors and hits whose rows were deleted are dropped; after
    a writer was killed, until the next ``ragkit index`` completes (or the Index is reopened).
    Keyword ranking reads FTS5's postings from memory (``store/bm25.py``, shared read-only,
    built in a background thread) only while they match the query's snapshot; else FTS5 ranks.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._local = threading.local()
        self._stores: list[IndexStore] = []
        self._chat: ChatModel | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        self._per_call: dict[Hashable, Settings] = {}  # overrides -> their checked Settings
        store, embedder = components.open_index(settings, query=True)
        self._embedder: Embedder = embedder
        self._stores.append(store)
        # Loaded by the first query that ranks by vector (keyword search needs none), checked
        # against SQLite then, and again only when a writer saves a new generation.
        self._faiss: Any = None
        self._faiss_generation = -1
        # Keyword postings in memory (SQLite indexes): built in the background once keyword
        # ranking is asked for twice, used while they match what a query's snapshot holds.
        self._keywords = KeywordMemory(store.path) if isinstance(store, Store) else None
        self._share_keywords(store)
        self._local.store = store
        self._local.generation = store.manifest.faiss_generation
        self._local.data_version = store.data_version()

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close every connection and the async worker threads; the Index cannot be used after."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            stores, self._stores = self._stores, []
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        if self._keywords is not None:
            self._keywords.close()
        for store in stores:
            store.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def embedder(self) -> Embedder:
        """The embedder the index was built with (loaded once)."""
        return self._embedder

    # -- queries -----------------------------------------------------------------------------

    def search(self, query: str, **overrides: Unpack[Overrides]) -> list[Hit]:
        """The passages that best match ``query``, best first (``ragkit.search`` on this index).

        ``overrides`` change settings for this call only: ``k``, ``mode``, filters, ``mmr``...
        """
        settings = self._settings(overrides)
        query = check_query(query)
        components.filters(settings)  # refuse bad filter values before reading anything
        store = self._store(dense=settings.mode != "keyword")
        return pipeline.retrieve_hits(store, self._embedder, query, settings)

    def ask(
        self,
        question: str,
        *,
        on_text: Callable[[str], None] | None = None,
        history: Sequence[Turn] = (),
        **overrides: Unpack[Overrides],
    ) -> Answer:
        """Answer ``question`` with numbered citations (``ragkit.ask`` on this index)."""
        settings = self._settings(overrides)
        question = check_query(question)
        components.filters(settings)
        store = self._store(dense=settings.mode != "keyword")
        return pipeline.answer(
            question,
            settings,
            lambda q: pipeline.retrieve_hits(store, self._embedder, q, settings, cosine=True),
            self._embedder,
            lambda: self._chat_model(settings),
            on_text=on_text,
            history=history,
        )

    async def asearch(self, query: str, **overrides: Unpack[Overrides]) -> list[Hit]:
        """``search`` without blocking the event loop; ``max_concurrency`` calls run at once."""
        return await self._run(functools.partial(self.search, query, **overrides))

    async def aask(
        self,
        question: str,
        *,
        on_text: Callable[[str], None] | None = None,
        history: Sequence[Turn] = (),
        **overrides: Unpack[Overrides],
    ) -> Answer:
        """``ask`` without blocking the event loop; ``on_text`` is called from a worker thread."""
        call = functools.partial(self.ask, question, on_text=on_text, history=history, **overrides)
        return await self._run(call)

    def status(self) -> IndexStatus:
        """Where the index is, what built it, what it holds, and whether FAISS agrees."""
        return maintenance.index_status(self._store(dense=False), self.settings)

    def index(
        self,
        path: str | Path,
        *,
        progress: Progress | None = None,
        wait: bool = False,
        dry_run: bool = False,
    ) -> IndexReport:
        """Bring this index in line with the folder at ``path`` (``ragkit.index``)."""
        self._check_open()
        return pipeline.index(path, self.settings, progress=progress, wait=wait, dry_run=dry_run)

    # -- internals ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("this Index is closed: open another with ragkit.open()")

    def _settings(self, overrides: Overrides) -> Settings:
        fixed = [name for name in _FIXED if overrides.get(name) is not None]
        if fixed:
            raise ConfigError(
                f"{', '.join(fixed)} cannot change per call on an open index:"
                " open another with ragkit.open(...)"
            )
        if not overrides:
            return self.settings
        try:
            # Types too: True == 1 and 1.0 == 1, but they are not checked alike.
            key: Hashable = tuple(sorted((k, type(v), v) for k, v in overrides.items()))
            hash(key)
        except TypeError:  # a value such as a list: checked afresh each call
            return self.settings.replace(**overrides)
        # Checking a Settings costs ~50 us, a tenth of a warm dense query: an app passing the
        # same overrides on every call (mode="dense", k=10) gets the checked Settings again.
        cached = self._per_call.get(key)
        if cached is None:
            cached = self.settings.replace(**overrides)  # checked, as every Settings is
            with self._lock:
                if len(self._per_call) >= _PER_CALL_KEPT:
                    self._per_call.clear()
                self._per_call[key] = cached
        return cached

    def _store(self, *, dense: bool = True) -> IndexStore:
        """This thread's connection, after catching up with what other processes committed;
        with ``dense``, sharing the FAISS index of the newest saved generation."""
        self._check_open()
        store: IndexStore | None = getattr(self._local, "store", None)
        if store is None:
            store = self.settings.address.open()
            with self._lock:
                if self._closed:
                    store.close()
                    self._check_open()
                self._stores.append(store)
            self._local.store = store
            self._local.data_version = None
            self._share_keywords(store)
        version = store.data_version()
        if version != self._local.data_version:  # another connection committed something
            self._local.data_version = version
            self._local.generation = store.refresh_manifest().faiss_generation
        if dense and self._local.generation != self._faiss_generation:
            with self._lock:
                if self._local.generation != self._faiss_generation:
                    store.share_vectors(None)
                    self._faiss = store.faiss_index()
                    self._faiss_generation = self._local.generation
        store.share_vectors(self._faiss)
        return store

    def _share_keywords(self, store: IndexStore) -> None:
        if self._keywords is not None and isinstance(store, Store):
            store.share_keywords(self._keywords)

    def _chat_model(self, settings: Settings) -> ChatModel:
        if settings is not self.settings:  # per-call chat settings: a model for this call
            return components.chat_model(settings)
        with self._lock:
            if self._chat is None:
                self._chat = components.chat_model(settings)
            return self._chat

    async def _run(self, call: Callable[[], T]) -> T:
        self._check_open()
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.settings.max_concurrency, thread_name_prefix="ragkit-index"
                )
            pool = self._pool
        return await asyncio.get_running_loop().run_in_executor(pool, call)


def open(settings: Settings | None = None, **overrides: Unpack[Overrides]) -> Index:  # noqa: A001
    """Open an index for many queries: ``with ragkit.open(index="docs") as idx: idx.search(q)``.

    Settings are the keyword arguments of the module-level verbs (``index``, ``index_dir``,
    ``k``, ``mode``...); those given here are the defaults of every call on the Index.
    """
    # A Settings object plus overrides is checked like keyword arguments (Settings.__post_init__).
    return Index(components.resolve_settings(settings, overrides))
