"""Citation markers checked against the sources: invalid ones dropped, whole or while streaming.

A marker such as ``[7]`` that names no source is removed together with what only existed to
introduce it: a lead-in ("See also [7]." goes entirely, "…, see [7]" loses ", see"), and
parentheses that held nothing else ("(see [7])"). Anything else around a marker is left alone:
a lead-in is only a few fixed words right before the marker.

:class:`CitationStream` applies the same rule to text arriving in pieces. It holds back only
what could still turn out to be (part of) an invalid marker or its lead-in, so what it passes on
is always a prefix of the final, checked text: stdout carries the answer once, and never an
invalid marker.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# Words that only introduce a marker. Each multi-word lead-in's first word is a lead-in by
# itself ("see" for "see also"), so a stream never has to take back words it already passed on.
_LEAD = r"(?:see[ \t]+also|see|cf\.?)"
_ONE = r"\[\d+(?:[ \t]*,[ \t]*\d+)*\]"
_CITE = re.compile(
    r"(?P<sep>[,;][ \t]*)?"
    r"(?P<pre>[ \t]*(?P<open>\([ \t]*)?(?:(?<![\w])(?P<lead>" + _LEAD + r")[ \t]*)?)"
    r"(?P<marks>" + _ONE + r"(?:[ \t,]*" + _ONE + r")*)"
    r"(?P<close>[ \t]*\))?"
    r"(?P<end>[.!?])?",
    re.IGNORECASE,
)
# The tail of a stream that a later piece could still make part of a construct above: a lead-in,
# a "(", markers (whose validity decides the end punctuation) or a "[" still open.
_TAIL = re.compile(
    r"(?:[,;][ \t]*)?[ \t]*(?:\([ \t]*)?(?:(?<![\w])" + _LEAD + r"[ \t]*)?"
    r"(?:" + _ONE + r"[ \t,]*)*(?:\[[\d, \t]*)?(?:[ \t]*\))?$",
    re.IGNORECASE,
)
_SENTENCE_START = re.compile(r"(?:^|[.!?][\"')\]]*|\n)[ \t]*$")


def check_citations(text: str, sources: int) -> tuple[str, list[int]]:
    """``text`` without markers naming no source (1..``sources``), and the numbers it cites.

    Markers listing several numbers are written one per source (``[1, 2]`` -> ``[1][2]``).
    """
    cited: list[int] = []

    def fix(match: re.Match[str]) -> str:
        numbers = [int(n) for n in re.findall(r"\d+", match["marks"])]
        valid = [n for n in numbers if 1 <= n <= sources]
        for n in valid:
            if n not in cited:
                cited.append(n)
        sep, pre, close, end = (match[g] or "" for g in ("sep", "pre", "close", "end"))
        if valid:
            return sep + pre + "".join(f"[{n}]" for n in valid) + close + end
        if match["open"] and not close:
            return sep + pre + end  # "(see [7], p. 3)": not only a citation; keep the rest
        if match["open"] or match["lead"]:
            sep = ""
        at_start = _SENTENCE_START.search(text, 0, match.start()) is not None
        if at_start and not sep:
            return ""  # a sentence that was only this citation
        return sep + end

    cleaned = _CITE.sub(fix, text)
    cleaned = re.sub(r"[ \t]+([.,;:!?])", r"\1", cleaned)  # space left before punctuation
    cleaned = re.sub(r"[ \t]{2,}", " ", cleaned).strip()
    return cleaned, cited


def _stable_end(raw: str) -> int:
    """Where the part of ``raw`` that no later text can change ends."""
    # Trailing whitespace waits (what follows decides whether it stays), and so does a last word
    # that may be incomplete ("Se" of "See also").
    complete = raw if raw[-1:].isspace() else re.sub(r"\S+$", "", raw)
    cut = len(complete.rstrip())
    tail = _TAIL.search(raw, 0, cut)
    if tail is not None and tail.start() < cut:
        cut = len(raw[: tail.start()].rstrip())
    return cut


class CitationStream:
    """Passes streamed text on with invalid markers (and their lead-ins) already removed."""

    def __init__(self, sources: int, on_text: Callable[[str], None]) -> None:
        self.sources = sources
        self.on_text = on_text
        self.raw = ""
        self.shown = ""

    def __call__(self, piece: str) -> None:
        """Take the next piece of the model's text; pass on what is settled."""
        self.raw += piece
        self._show(check_citations(self.raw[: _stable_end(self.raw)], self.sources)[0])

    def finish(self) -> str:
        """Pass on the rest once the model is done; return the whole checked text."""
        text = check_citations(self.raw, self.sources)[0]
        self._show(text)
        return text

    def _show(self, text: str) -> None:
        # Only ever extend what was shown; a checked prefix that does not extend it waits
        # (held text is at most a few words).
        if len(text) > len(self.shown) and text.startswith(self.shown):
            self.on_text(text[len(self.shown) :])
            self.shown = text
