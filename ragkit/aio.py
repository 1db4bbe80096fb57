"""The async verbs: ``await aask(...)``, ``asearch``, ``aindex``; ``max_concurrency`` at a time.

Each call runs the ordinary synchronous verb in a worker thread. Everything that takes time in
it (HTTP to the chat and embedding APIs, SQLite, FAISS, numpy) releases the GIL, so threads
overlap as well as coroutines would, and the async answers come from the very same code as the
sync ones. It is thread-safe because each call opens its own index connection (SQLite
connections never cross threads) and builds its own embedder and chat client. An app making
many calls keeps an index open instead (``ragkit.open()``) and awaits ``idx.asearch``/``aask``.

The bound: calls go to a thread pool with ``max_concurrency`` workers, one pool per distinct
value, shared by every event loop in the process; further calls wait their turn in order. A
cancelled call that has not started never runs; one already running finishes in its thread.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ragkit import pipeline
from ragkit.config import Settings

if TYPE_CHECKING:
    from ragkit.answerer import Answer
    from ragkit.conversation import Turn
    from ragkit.pipeline import IndexReport, Progress
    from ragkit.retriever import Hit

T = TypeVar("T")

_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(size: int) -> ThreadPoolExecutor:
    with _pools_lock:
        pool = _pools.get(size)
        if pool is None:
            pool = _pools[size] = ThreadPoolExecutor(size, thread_name_prefix=f"ragkit-aio{size}")
        return pool


def _resolve(settings: Settings | None, overrides: dict[str, Any]) -> Settings:
    return Settings.load(**overrides) if settings is None else settings.replace(**overrides)


async def _run(settings: Settings, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    loop = asyncio.get_running_loop()
    call = functools.partial(fn, *args, settings, **kwargs)
    return await loop.run_in_executor(_pool(settings.max_concurrency), call)


async def aask(
    question: str,
    settings: Settings | None = None,
    *,
    on_text: Callable[[str], None] | None = None,
    history: Sequence[Turn] = (),
    **overrides: Any,
) -> Answer:
    """``ask`` without blocking the event loop; ``on_text`` is called from the worker thread."""
    resolved = _resolve(settings, overrides)
    return await _run(resolved, pipeline.ask, question, on_text=on_text, history=history)


async def asearch(query: str, settings: Settings | None = None, **overrides: Any) -> list[Hit]:
    """``search`` without blocking the event loop."""
    resolved = _resolve(settings, overrides)
    return await _run(resolved, pipeline.search, query)


async def aindex(
    path: str | Path,
    settings: Settings | None = None,
    *,
    progress: Progress | None = None,
    wait: bool = False,
    **overrides: Any,
) -> IndexReport:
    """``index`` without blocking the event loop; ``progress`` is called from the worker thread."""
    resolved = _resolve(settings, overrides)
    return await _run(resolved, pipeline.index, path, progress=progress, wait=wait)
