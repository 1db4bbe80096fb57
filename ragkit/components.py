"""How settings become ragkit's parts: the embedder, the open store, the chat model, the filters.

``pipeline`` and ``library`` build what a run or a query needs through these, so every entry
point (CLI, library, servers) reads the settings the same way.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ragkit.chat import ChatModel, OpenAIChatModel
from ragkit.config import Overrides, Settings
from ragkit.embedders import (
    Embedder,
    make_embedder,
    parse_spec,
    price_per_million_tokens,
    retired_model,
)
from ragkit.errors import IndexMismatchError
from ragkit.filters import Filters, make_filters
from ragkit.store.protocol import IndexStore

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


def resolve_settings(settings: Settings | None, overrides: Overrides) -> Settings:
    """``settings`` with ``overrides`` applied, or what the overrides and environment give."""
    return Settings.load(**overrides) if settings is None else settings.replace(**overrides)


def openai_credentials(settings: Settings) -> dict[str, Any]:
    """The keyword arguments ``make_client`` needs to reach OpenAI, a compatible server or Azure."""
    return {
        "api_key": settings.openai_api_key,
        "base_url": settings.openai_base_url,
        "azure_endpoint": settings.azure_endpoint,
        "azure_api_key": settings.azure_api_key,
        "azure_api_version": settings.azure_api_version,
    }


# A question someone is waiting for gets a short retry budget (about ten seconds at most, each
# retry logged as a warning); indexing keeps the long one, since it resumes unattended work.
QUERY_MAX_RETRIES = 2
QUERY_MAX_RETRY_DELAY = 2.0
QUERY_TIMEOUT = 15.0


def embedder_for(
    spec: str, settings: Settings, *, count_only: bool = False, query: bool = False
) -> Embedder:
    """The embedder ``spec`` names, with the settings' credentials and limits (``query``: the
    short retry budget of a question someone is waiting for; ``count_only``: a dry run's)."""
    if query:
        retries = {
            "timeout": min(settings.openai_timeout, QUERY_TIMEOUT),
            "max_retries": min(settings.openai_max_retries, QUERY_MAX_RETRIES),
            "max_retry_delay": QUERY_MAX_RETRY_DELAY,
            "purpose": "query embedding",
        }
    else:
        retries = {"timeout": settings.openai_timeout, "max_retries": settings.openai_max_retries}
    return make_embedder(
        spec,
        **openai_credentials(settings),
        azure_deployment=settings.azure_deployment,
        concurrency=settings.openai_concurrency,
        batch_size=settings.batch_size,
        count_only=count_only,  # a dry run counts tokens: no credentials needed
        **retries,
    )


def cost_of(embedder: Embedder, tokens: int) -> float | None:
    """What embedding ``tokens`` costs at the model's list price; None when no price is known."""
    price = price_per_million_tokens(embedder)
    return None if price is None else tokens * price / 1e6


def open_index(
    settings: Settings, *, count_only: bool = False, query: bool = False
) -> tuple[IndexStore, Embedder]:
    """The index named by ``settings`` and the embedder it was built with (``query``: set up to
    embed questions, with a short retry budget)."""
    store = settings.address.open()
    m = store.manifest
    successor = retired_model(m.embedder, m.model)
    if successor is not None:
        store.close()
        raise IndexMismatchError(
            f"index {settings.index} was built with an older graph of {successor}, whose vectors"
            f" this ragkit no longer computes: re-index {m.source or 'its folder'} into a new"
            f" index with `ragkit index {m.source or 'FOLDER'} --index NEW_NAME --embedder"
            f" {successor}`"
        )
    if settings.embedder:
        provider, model = parse_spec(settings.embedder)
        if provider != m.embedder or (model and model != m.model):
            store.close()
            raise IndexMismatchError(
                f"index {settings.index} was built with {m.embedder_spec}, not {settings.embedder}:"
                f" drop --embedder (and RAGKIT_EMBEDDER) to use {m.embedder_spec},"
                " or build a new index with --index NEW_NAME"
            )
    try:
        return store, embedder_for(m.embedder_spec, settings, count_only=count_only, query=query)
    except BaseException:
        store.close()
        raise


def filters(settings: Settings) -> Filters:
    """The metadata filters the settings ask for (path, file type, mtime range, heading)."""
    return make_filters(
        path=settings.path,
        file_type=settings.file_type,
        modified_after=settings.modified_after,
        modified_before=settings.modified_before,
        heading=settings.heading,
    )


def chat_model(settings: Settings) -> ChatModel:
    """The chat model ``settings`` describe, its request shaped for the model's family."""
    client = None
    if settings.azure_endpoint:
        # Azure OpenAI through the SDK's Azure client; the chat model names the deployment.
        from ragkit.chat import without_quota_retries
        from ragkit.openai_client import make_client

        client = without_quota_retries(make_client(**openai_credentials(settings)))
    return OpenAIChatModel(
        settings.chat_model,
        api_key=settings.openai_api_key,
        base_url=settings.openai_base_url,
        client=client,
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_tokens=settings.max_tokens,
        seed=settings.seed,
        stop=settings.stop,
        reasoning_effort=settings.reasoning_effort,
    )
