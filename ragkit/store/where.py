"""Search filters (``Filters.conditions()``) compiled into SQLite SQL over ``c`` and ``d``."""

from __future__ import annotations

from typing import Any

from ragkit.filters import Condition, Filters

# Which table alias holds each filterable field: c = chunks, d = documents.
COLUMNS = {"path": "d.path", "kind": "d.kind", "mtime": "d.mtime", "heading": "c.heading"}


def sqlite_where(filters: Filters | None) -> tuple[str, list[Any]]:
    """An SQL condition over ``c`` (chunks) and ``d`` (documents), and its parameters."""
    clauses: list[str] = []
    args: list[Any] = []
    for group in (filters or Filters()).conditions():
        either = [_condition(c, args) for c in group]
        clauses.append(either[0] if len(either) == 1 else "(" + " OR ".join(either) + ")")
    return (" AND ".join(clauses) or "1"), args


def _condition(cond: Condition, args: list[Any]) -> str:
    column = COLUMNS[cond.field]
    if cond.op == "glob":
        args.append(cond.value)
        return f"{column} GLOB ?"
    if cond.op == "in":
        args.extend(cond.value)
        return f"{column} IN ({','.join('?' * len(cond.value))})"
    if cond.op == "endswith":
        # lower() folds ASCII only, which covers file suffixes; '%' and '_' cannot occur in a
        # suffix that parse_file_types accepted, so LIKE needs no escaping.
        args.append("%" + cond.value)
        return f"lower({column}) LIKE ?"
    if cond.op in ("ge", "lt"):
        args.append(cond.value)
        return f"{column} {'>=' if cond.op == 'ge' else '<'} ?"
    if cond.op == "contains":
        args.append(cond.value)
        return f"instr(lower({column}), ?) > 0"
    raise ValueError(f"unknown filter operator {cond.op!r}")
