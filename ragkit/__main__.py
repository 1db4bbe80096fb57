"""``python -m ragkit``: the same as the ``ragkit`` command."""

from ragkit.cli import main

if __name__ == "__main__":
    main()
