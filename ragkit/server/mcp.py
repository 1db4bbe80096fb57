"""``ragkit mcp``: the index as Model Context Protocol tools (search, ask, read), read-only.

Built on the official ``mcp`` SDK's ``MCPServer``. Every tool returns structured content in the
shapes of ``ragkit.shapes`` (what ``--json`` prints), with each passage's path, page, lines and
heading. A ragkit error comes back as a tool error carrying its one-line message; the server
keeps serving. The tool descriptions say which folder the index mirrors and how many documents
it holds, so an agent can tell when to use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from ragkit import __version__, shapes
from ragkit.errors import RagkitError

if TYPE_CHECKING:
    from ragkit.server.backend import Backend

Query = Annotated[str, Field(description="What to look for, in plain words.")]
K = Annotated[
    int | None, Field(description="How many passages to return (default: the server's k).", ge=1)
]
ModeName = Annotated[
    Literal["hybrid", "dense", "keyword"] | None,
    Field(description="hybrid (default: meaning + keywords), dense (meaning) or keyword (BM25)."),
]
PathGlob = Annotated[
    str | None, Field(description="Only documents whose path matches this glob, e.g. 'docs/*'.")
]
FileType = Annotated[str | None, Field(description="Only these kinds or suffixes, e.g. 'pdf,.md'.")]
After = Annotated[
    str | None, Field(description="Only documents modified on or after this ISO date.")
]
Before = Annotated[str | None, Field(description="Only documents modified before this ISO date.")]
HeadingText = Annotated[
    str | None, Field(description="Only passages whose heading path contains this text.")
]


def _overrides(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def describe(backend: Backend) -> str:
    """One sentence saying what the index holds, for tool descriptions."""
    st = backend.status()
    source = st.source or "an unknown folder"
    return (
        f"The ragkit index {st.index!r} mirrors {source}: {st.documents} documents,"
        f" {st.chunks} passages, embedded with {st.embedder}."
    )


def build_server(backend: Backend) -> MCPServer:
    """An MCP server whose tools search, answer from and read the backend's index."""
    holds = describe(backend)
    server: MCPServer = MCPServer(
        "ragkit",
        version=__version__,
        instructions=(
            f"{holds} Use `search` to find passages, `ask` for an answer with checked"
            " citations, `read` to see a cited span or a whole document in context."
        ),
    )
    read_only = ToolAnnotations(
        read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
    )

    def search(
        query: Query,
        k: K = None,
        mode: ModeName = None,
        path: PathGlob = None,
        file_type: FileType = None,
        modified_after: After = None,
        modified_before: Before = None,
        heading: HeadingText = None,
    ) -> dict[str, Any]:
        try:
            settings, hits = backend.search(
                query,
                **_overrides(
                    k=k,
                    mode=mode,
                    path=path,
                    file_type=file_type,
                    modified_after=modified_after,
                    modified_before=modified_before,
                    heading=heading,
                ),
            )
        except RagkitError as exc:
            raise ToolError(str(exc)) from None
        return shapes.search_json(query, settings.mode, hits)

    def ask(
        question: Annotated[str, Field(description="The question to answer from the documents.")],
        k: K = None,
        mode: ModeName = None,
        path: PathGlob = None,
        file_type: FileType = None,
        heading: HeadingText = None,
    ) -> dict[str, Any]:
        try:
            answer = backend.ask(
                question,
                **_overrides(k=k, mode=mode, path=path, file_type=file_type, heading=heading),
            )
        except RagkitError as exc:
            raise ToolError(str(exc)) from None
        return shapes.answer_json(answer)

    def read(
        path: Annotated[
            str, Field(description="An indexed document's path, as search results give it.")
        ],
        start_line: Annotated[
            int | None, Field(description="First line to return (default: 1).", ge=1)
        ] = None,
        end_line: Annotated[
            int | None, Field(description="Last line to return (default: the last).", ge=1)
        ] = None,
        page: Annotated[
            int | None, Field(description="PDF page; PDF lines are counted per page.", ge=1)
        ] = None,
    ) -> dict[str, Any]:
        try:
            passage = backend.read(path, start_line=start_line, end_line=end_line, page=page)
        except RagkitError as exc:
            raise ToolError(str(exc)) from None
        return shapes.passage_json(passage)

    server.add_tool(
        search,
        title="Search the documents",
        description=(
            f"Search the documents for passages matching a query. {holds} Returns ranked"
            " passages with their path, page, start and end line, heading, score, chunk id and"
            " text."
        ),
        annotations=read_only,
        structured_output=True,
    )
    server.add_tool(
        ask,
        title="Answer from the documents",
        description=(
            f"Answer a question from the documents, citing passages as [n]. {holds} Returns"
            " the answer, its citations with their locations, `abstained` (true: the documents"
            " do not hold the answer) and `complete` (false: the answer was cut short)."
        ),
        annotations=read_only.model_copy(update={"open_world_hint": backend.uses_llm}),
        structured_output=True,
    )
    server.add_tool(
        read,
        title="Read an indexed document",
        description=(
            f"Read a cited span, or a whole document, as the index stores it. {holds} Give the"
            " path from a search result or citation, and optionally the line range (and page,"
            " for PDFs). Only indexed documents can be read."
        ),
        annotations=read_only,
        structured_output=True,
    )
    return server
