"""The one place ragkit builds an ``openai`` client and turns its errors into one-line messages.

Works for OpenAI itself and any OpenAI-compatible server (vLLM, Ollama, llama.cpp) through
``base_url``. Keys never appear in messages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ragkit.errors import ChatError, ConfigError, EmbeddingError, QuotaError, RagkitError

if TYPE_CHECKING:
    import openai


def make_client(
    *,
    api_key: str | None,
    base_url: str | None,
    timeout: float = 60.0,
    max_retries: int = 2,
) -> openai.OpenAI:
    """An OpenAI client; a base URL alone is enough (local servers rarely check keys)."""
    import openai

    if not api_key and not base_url:
        raise ConfigError(
            "no OpenAI credentials: set OPENAI_API_KEY (or OPENAI_BASE_URL for an"
            " OpenAI-compatible server), or use the offline default with --embedder local"
        )
    return openai.OpenAI(
        api_key=api_key or "not-needed",
        base_url=base_url,
        timeout=timeout,
        max_retries=max_retries,
    )


def explain(exc: Exception, *, what: str) -> RagkitError:
    """A RagkitError with one line saying what went wrong with an OpenAI call and what to do."""
    import openai

    error_cls: type[RagkitError] = EmbeddingError if what == "embedding" else ChatError
    if isinstance(exc, openai.RateLimitError) and _code(exc) == "insufficient_quota":
        return QuotaError(
            f"{what} stopped: the OpenAI account is out of quota (insufficient_quota);"
            " add credit or use another key, then re-run: work already done is kept"
        )
    if isinstance(exc, openai.AuthenticationError):
        return ConfigError(f"{what} failed: the API key was rejected (401); check OPENAI_API_KEY")
    if isinstance(exc, openai.PermissionDeniedError):
        return ConfigError(
            f"{what} failed: access denied (403); check the key's project and model access"
        )
    if isinstance(exc, openai.NotFoundError):
        return ConfigError(
            f"{what} failed: model or endpoint not found (404): {_message(exc)};"
            " check the model name and OPENAI_BASE_URL"
        )
    if isinstance(exc, openai.BadRequestError):
        return error_cls(f"{what} request rejected (400): {_message(exc)}")
    if isinstance(exc, openai.APITimeoutError):
        return error_cls(f"{what} timed out: the server did not answer in time; re-run to resume")
    if isinstance(exc, openai.APIConnectionError):
        return error_cls(
            f"{what} failed: cannot reach the server"
            f" ({type(exc.__cause__).__name__ if exc.__cause__ else 'connection error'});"
            " check OPENAI_BASE_URL and your network, then re-run to resume"
        )
    if isinstance(exc, openai.APIStatusError):
        return error_cls(
            f"{what} failed with HTTP {exc.status_code}: {_message(exc)}; re-run to resume"
        )
    return error_cls(f"{what} failed: {exc}")


def _body(exc: Any) -> dict[str, Any]:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return inner
    return {}


def _code(exc: Exception) -> str | None:
    body = _body(exc)
    code = body.get("code") or body.get("type") or getattr(exc, "code", None)
    return str(code) if code else None


def _message(exc: Exception) -> str:
    message = _body(exc).get("message")
    return str(message) if message else str(exc)
