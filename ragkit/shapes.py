"""The JSON shapes of ragkit's results, defined once for ``--json``, the HTTP API and MCP.

Each function turns a result object into plain JSON-ready data; ``ragkit search --json``,
``POST /v1/search`` and the MCP ``search`` tool all print what ``search_json`` returns.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ragkit.answerer import Answer
    from ragkit.maintenance import IndexStatus
    from ragkit.pipeline import IndexReport
    from ragkit.reading import Passage
    from ragkit.retriever import Hit
    from ragkit.store import HealthReport


def hit_json(hit: Hit) -> dict[str, Any]:
    """One retrieved passage with its provenance."""
    return {
        "rank": hit.rank,
        "score": round(hit.score, 6),
        "dense_score": None if hit.dense_score is None else round(hit.dense_score, 6),
        "path": hit.path,
        "page": hit.page,
        "page_label": hit.page_label,
        "start_line": hit.start_line,
        "end_line": hit.end_line,
        "heading": hit.heading,
        "text": hit.text,
        "chunk_id": hit.chunk_id,
    }


def search_json(query: str, mode: str, hits: list[Hit]) -> dict[str, Any]:
    """A search's query, mode and ranked hits."""
    return {"query": query, "mode": mode, "hits": [hit_json(h) for h in hits]}


def answer_json(answer: Answer) -> dict[str, Any]:
    """An answer, whether it abstained or is complete, and its citations with their locations."""
    return {
        "question": answer.question,
        "answer": answer.text,
        "mode": answer.mode,
        "model": answer.model,
        "abstained": answer.abstained,
        "finish_reason": answer.finish_reason,
        "complete": answer.complete,
        "cited": answer.cited,
        "sources_dropped": answer.sources_dropped,
        "usage": answer.usage,
        "citations": [
            {
                "n": c.n,
                "path": c.path,
                "page": c.page,
                "page_label": c.page_label,
                "start_line": c.start_line,
                "end_line": c.end_line,
                "quote": c.quote,
            }
            for c in answer.citations
        ],
    }


def status_json(status: IndexStatus) -> dict[str, Any]:
    """An index's location, embedder, contents and health."""
    return asdict(status)


def _named(data: dict[str, Any]) -> dict[str, Any]:
    """JSON whose ``index`` is the index's name and ``path`` its folder, as in ``status``."""
    path = str(data.pop("index"))
    return {"index": Path(path).name, "path": path, **data}


def report_json(report: IndexReport) -> dict[str, Any]:
    """What one ``index`` run did."""
    data = _named(asdict(report))
    data["ok"] = report.ok
    data["moved"] = [{"from": a, "to": b} for a, b in report.moved]
    data["warnings"] = [{"path": p, "warning": w} for p, w in report.warnings]
    return data


def health_json(report: HealthReport) -> dict[str, Any]:
    """What ``doctor`` found (and, with ``--repair``, did)."""
    data = _named(asdict(report))
    data["ok"] = report.ok
    return data


def passage_json(passage: Passage) -> dict[str, Any]:
    """A span (or the whole) of an indexed document, page by page."""
    return {
        "path": passage.path,
        "kind": passage.kind,
        "page": passage.page,
        "start_line": passage.start_line,
        "end_line": passage.end_line,
        "whole": passage.whole,
        "text": passage.text,
        "sections": [
            {
                "page": s.page,
                "start_line": s.start_line,
                "end_line": s.end_line,
                "text": s.text,
            }
            for s in passage.sections
        ],
    }
