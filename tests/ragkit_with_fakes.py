"""The ``ragkit`` command with the test fakes registered, for tests that need a real process.

Run as ``python -m tests.ragkit_with_fakes ARGS`` or ``python tests/ragkit_with_fakes.py ARGS``;
``--embedder bow`` (tests/fakes.py) then works in the child process. Environment knobs, all
optional and inert when unset, let a test slow a run down, pause it, and see where it is:

- ``RAGKIT_TEST_PHASES``: file that gets a line "load", "embed", "write" or "renamed" each time
  the run enters that step (loading a file, embedding a batch, writing the FAISS temporary file,
  renaming it into place), flushed at once so a test can kill the process right after.
- ``RAGKIT_TEST_LOAD_DELAY`` / ``RAGKIT_TEST_EMBED_DELAY`` / ``RAGKIT_TEST_SAVE_DELAY``: seconds
  to sleep per file loaded, per batch embedded, and after each of "write" and "renamed".
- ``RAGKIT_TEST_EMBED_LOG``: file that gets one JSON-encoded line per text sent to the embedder.
- ``RAGKIT_TEST_GATE``: after its first batch, the embedder waits until this file exists.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from numpy.typing import NDArray  # noqa: E402

import ragkit.pipeline  # noqa: E402
import ragkit.store.vectors  # noqa: E402
import ragkit.sync  # noqa: E402
from ragkit.cli import main  # noqa: E402
from ragkit.embedders import register_embedder  # noqa: E402
from tests.fakes import BagOfWordsEmbedder  # noqa: E402

_env = os.environ.get


def _delay(name: str) -> float:
    return float(_env(name) or 0)


def _append(variable: str, line: str) -> None:
    target = _env(variable)
    if target:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()


def _mark(phase: str) -> None:
    _append("RAGKIT_TEST_PHASES", phase)


class _InstrumentedEmbedder(BagOfWordsEmbedder):
    """The bag-of-words fake, slowed, gated and logged as the environment asks."""

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        _mark("embed")
        gate = _env("RAGKIT_TEST_GATE")
        if gate and self.calls:
            while not os.path.exists(gate):
                time.sleep(0.01)
        time.sleep(_delay("RAGKIT_TEST_EMBED_DELAY"))
        vectors = super().embed(texts)
        for text in texts:
            _append("RAGKIT_TEST_EMBED_LOG", json.dumps(text))
        return vectors


register_embedder("bow", lambda model, options: _InstrumentedEmbedder())

_load = ragkit.sync.load_document


def _slow_load(*args: Any, **kwargs: Any) -> Any:
    _mark("load")
    time.sleep(_delay("RAGKIT_TEST_LOAD_DELAY"))
    return _load(*args, **kwargs)


ragkit.sync.load_document = _slow_load  # type: ignore[assignment]

_faiss_write = ragkit.store.vectors.import_faiss().write_index


def _slow_write(index: Any, path: str) -> None:
    _faiss_write(index, path)
    _mark("write")  # the temporary file is written, not yet renamed
    time.sleep(_delay("RAGKIT_TEST_SAVE_DELAY"))


ragkit.store.vectors.import_faiss().write_index = _slow_write

_replace = ragkit.store.vectors.replace


def _slow_replace(tmp: Path, final: Path) -> None:
    _replace(tmp, final)
    _mark("renamed")  # the new file is in place, the manifest not yet updated
    time.sleep(_delay("RAGKIT_TEST_SAVE_DELAY"))


ragkit.store.vectors.replace = _slow_replace

if __name__ == "__main__":
    main()
