"""``python -m tests.ragkit_with_fakes ARGS``: the ragkit CLI with the test fakes registered.

Subprocess tests use it so that ``--embedder bow`` (tests/fakes.py) works in the child process.
"""

from __future__ import annotations

import tests.fakes  # noqa: F401  (registers the "bow" embedder)
from ragkit.cli import main

if __name__ == "__main__":
    main()
