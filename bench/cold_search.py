"""Cold ``ragkit search`` on an OpenAI-embedded index: with and without importing the openai SDK.

A new process per search, as a user's shell runs it. The index is embedded through the test
server (tests/openai_server.py, on 127.0.0.1), so no network is needed. Reported, all from this
one run (medians over ``--repeat``):

- ``python -c pass``: the interpreter alone;
- ``import openai``: what the SDK costs to import;
- ``ragkit search``: as shipped (the query goes out over the standard library's HTTP);
- ``ragkit search`` with the SDK imported first: what the query path cost when it used the SDK;

and the ratio of the last two.

    python bench/cold_search.py [--repeat 7] [--docs 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.openai_server import OpenAITestServer  # noqa: E402

WORDS = (
    "battery warranty brake pads tyre pressure saddle height chain grease gears cable helmet"
    " lights frame wheel spoke rim valve pump commute route rain mudguard pannier lock"
).split()


def timed(argv: list[str], env: dict[str, str], repeat: int) -> float:
    """Median wall time of ``argv`` run ``repeat`` times, each in a new process."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"{argv} failed: {done.stderr[-500:]}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--docs", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, OpenAITestServer() as server:
        docs = Path(tmp) / "docs"
        docs.mkdir()
        for i in range(args.docs):
            words = " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(120))
            (docs / f"d{i}.md").write_text(f"# Doc {i}\n\n{words}.\n")
        env = {
            **os.environ,
            "OPENAI_BASE_URL": server.base_url,
            "OPENAI_API_KEY": "test",
            "RAGKIT_INDEX_DIR": str(Path(tmp) / "indexes"),
        }
        py = sys.executable
        subprocess.run(
            [py, "-m", "ragkit", "index", str(docs), "--embedder", "openai"],
            env=env,
            check=True,
            capture_output=True,
        )
        search = ["search", "battery warranty"]
        with_sdk = "import sys, openai; from ragkit.cli import main; sys.argv[1:] = {!r}; main()"
        rows = {
            "python -c pass": timed([py, "-c", "pass"], env, args.repeat),
            "import openai": timed([py, "-c", "import openai"], env, args.repeat),
            "ragkit search": timed([py, "-m", "ragkit", *search], env, args.repeat),
            "ragkit search, SDK imported": timed(
                [py, "-c", with_sdk.format(search)], env, args.repeat
            ),
        }
    print(f"cold search on an OpenAI-embedded index ({args.docs} docs), median of {args.repeat}")
    for name, seconds in rows.items():
        print(f"  {name:<30} {seconds:6.2f} s")
    ratio = rows["ragkit search, SDK imported"] / rows["ragkit search"]
    print(f"  the SDK path takes {ratio:.1f}x as long as the shipped one")


if __name__ == "__main__":
    main()
