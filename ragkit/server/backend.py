"""The one index a server holds open for its life, and the limits every request is held to.

``Backend`` is what the MCP tools and the HTTP routes call: search, ask, read and status on one
open ``ragkit.Index`` (embedder, chat model and FAISS loaded once), with per-request overrides
(k, mode, filters) validated like any setting and k capped at ``max_k``. It is safe to call
from many threads at once, as the Index is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ragkit import components
from ragkit.config import Settings
from ragkit.errors import QueryError
from ragkit.library import Index
from ragkit.reading import Passage, read
from ragkit.store import Store

if TYPE_CHECKING:
    from ragkit.answerer import Answer
    from ragkit.maintenance import IndexStatus
    from ragkit.retriever import Hit

# What a request may change; everything else is the server's own setting.
REQUEST_SETTINGS = (
    "k",
    "mode",
    "min_score",
    "mmr",
    "path",
    "file_type",
    "modified_after",
    "modified_before",
    "heading",
)


class Backend:
    """Search, ask, read and status on one index, for a server's lifetime.

    Opening it opens the index (no index: an error naming the command that builds one).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.index = Index(settings)

    @property
    def uses_llm(self) -> bool:
        """True when answers come from a chat model (outside this machine, usually)."""
        s = self.settings
        return s.openai_configured if s.llm is None else s.llm

    def close(self) -> None:
        """Close the index."""
        self.index.close()

    def request_settings(self, overrides: dict[str, Any]) -> Settings:
        """The server's settings with one request's overrides, validated and k capped."""
        unknown = set(overrides) - set(REQUEST_SETTINGS)
        if unknown:
            raise QueryError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        settings = self.settings.replace(**overrides)
        settings.validate()
        if settings.k > settings.max_k:
            raise QueryError(
                f"k={settings.k} is more than this server allows: ask for at most"
                f" {settings.max_k} (max_k)"
            )
        components.filters(settings)  # bad filter values are the caller's mistake: say so now
        return settings

    def search(self, query: str, **overrides: Any) -> tuple[Settings, list[Hit]]:
        """The request's settings and the passages that best match ``query``."""
        settings = self.request_settings(overrides)
        return settings, self.index.search(query, **overrides)

    async def asearch(self, query: str, **overrides: Any) -> tuple[Settings, list[Hit]]:
        """``search`` on the Index's own pool: at most ``max_concurrency`` run at once."""
        settings = self.request_settings(overrides)
        return settings, await self.index.asearch(query, **overrides)

    async def aask(self, question: str, **overrides: Any) -> Answer:
        """``ask`` on the Index's own pool: at most ``max_concurrency`` run at once."""
        self.request_settings(overrides)
        return await self.index.aask(question, **overrides)

    def ask(
        self, question: str, *, on_text: Callable[[str], None] | None = None, **overrides: Any
    ) -> Answer:
        """Answer ``question`` from the index; ``on_text`` receives streamed LLM text."""
        self.request_settings(overrides)
        return self.index.ask(question, on_text=on_text, **overrides)

    def read(
        self,
        path: str,
        *,
        start_line: int | None = None,
        end_line: int | None = None,
        page: int | None = None,
    ) -> Passage:
        """A span, or the whole, of an indexed document, from the index alone."""
        # Reading is rare next to searching: a connection of its own, closed after.
        with Store.open(self.settings.index_path) as store:
            return read(store, path, start_line=start_line, end_line=end_line, page=page)

    def status(self) -> IndexStatus:
        """The index's location, embedder, contents and health."""
        return self.index.status()
