"""The one place ragkit builds an ``openai`` client and turns its errors into one-line messages.

Works for OpenAI itself, any OpenAI-compatible server (vLLM, Ollama, llama.cpp) through
``base_url``, and Azure OpenAI through the SDK's ``AzureOpenAI`` client (``azure_endpoint``).
Keys never appear in messages: the messages are written here, and whatever the server said is
passed through :func:`redact` first.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ragkit.errors import ChatError, ConfigError, EmbeddingError, QuotaError, RagkitError

if TYPE_CHECKING:
    import openai

# httpx's names for "never got through" (as opposed to a connection the server closed).
CONNECT_FAILURES = ("ConnectError", "ConnectTimeout")

# Azure needs an API version; this is a GA one that has embeddings and chat completions.
DEFAULT_AZURE_API_VERSION = "2024-10-21"

# Secrets as they may appear in text: OpenAI-style keys, bearer tokens, Azure api-key values,
# and user:password in URLs.
_SECRET = re.compile(
    r"(?:\bsk-[A-Za-z0-9_\-*]{6,})"
    r"|(?<=Bearer )\S+"
    r"|(?<=api-key[=:] )\S+|(?<=api-key=)[^&\s]+"
    r"|(?<=://)[^/@\s]+(?=@)",
    re.IGNORECASE,
)


# The key values ragkit was given: masked wherever they appear, whatever their shape (an Azure
# key is 32 hex characters, which no pattern can tell from a hash). Shorter strings are not
# treated as secrets: masking "test" everywhere would garble messages, and protects nothing.
_KEYS: set[str] = set()
_MIN_KEY_LENGTH = 8


def remember_keys(*keys: str | None) -> None:
    """Mask these key values in every message ragkit writes from now on."""
    for key in keys:
        if key and len(key.strip()) >= _MIN_KEY_LENGTH:
            _KEYS.add(key.strip())


def make_client(
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    azure_endpoint: str | None = None,
    azure_api_key: str | None = None,
    azure_api_version: str | None = None,
    timeout: float = 60.0,
    max_retries: int = 2,
) -> openai.OpenAI:
    """An OpenAI or Azure OpenAI client; a base URL alone will do (local servers rarely check keys).

    With ``azure_endpoint`` the client is an ``AzureOpenAI`` one: each request's ``model`` is
    the name of the Azure deployment that serves it.
    """
    check_credentials(
        api_key=api_key,
        base_url=base_url,
        azure_endpoint=azure_endpoint,
        azure_api_key=azure_api_key,
    )
    import openai

    if azure_endpoint:
        return openai.AzureOpenAI(
            azure_endpoint=azure_endpoint,
            api_key=azure_api_key,
            api_version=azure_api_version or DEFAULT_AZURE_API_VERSION,
            timeout=timeout,
            max_retries=max_retries,
        )
    return openai.OpenAI(
        api_key=api_key or "not-needed",
        base_url=base_url,
        timeout=timeout,
        max_retries=max_retries,
    )


def check_credentials(
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    azure_endpoint: str | None = None,
    azure_api_key: str | None = None,
) -> None:
    """Raise ConfigError, saying what to set, unless these credentials can make a client."""
    remember_keys(api_key, azure_api_key)
    if azure_endpoint:
        if base_url:
            raise ConfigError(
                "both OPENAI_BASE_URL and AZURE_OPENAI_ENDPOINT are set: unset one of them"
                " (Azure OpenAI uses AZURE_OPENAI_ENDPOINT alone)"
            )
        if not azure_api_key:
            raise ConfigError(
                "Azure OpenAI needs a key: set AZURE_OPENAI_API_KEY (or RAGKIT_AZURE_API_KEY)"
                " to the key of the resource at AZURE_OPENAI_ENDPOINT"
            )
        return
    if not api_key and not base_url:
        raise ConfigError(
            "no OpenAI credentials: set OPENAI_API_KEY (or OPENAI_BASE_URL for an"
            " OpenAI-compatible server, or AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_API_KEY),"
            " or use the offline default with --embedder local"
        )


def explain(exc: Exception, *, what: str) -> RagkitError:
    """A RagkitError with one line saying what went wrong with an OpenAI call and what to do."""
    import openai

    error_cls: type[RagkitError] = EmbeddingError if what.endswith("embedding") else ChatError
    # Indexing commits as it goes, so running it again resumes; a question is simply asked again.
    again = "re-run to resume" if what == "embedding" else "try again"
    azure = _is_azure(exc)
    key_var = "AZURE_OPENAI_API_KEY" if azure else "OPENAI_API_KEY"
    url_var = "AZURE_OPENAI_ENDPOINT" if azure else "OPENAI_BASE_URL"
    error: RagkitError
    if isinstance(exc, openai.RateLimitError) and error_code(exc) == "insufficient_quota":
        error = QuotaError(
            f"{what} stopped: the account is out of quota (insufficient_quota);"
            " add credit or use another key, then re-run: work already done is kept"
        )
    elif isinstance(exc, openai.AuthenticationError):
        error = ConfigError(f"{what} failed: the API key was rejected (401); set a valid {key_var}")
    elif isinstance(exc, openai.PermissionDeniedError):
        error = ConfigError(
            f"{what} failed: access denied (403): {_message(exc)}; check the key's project"
            " and its access to this model"
        )
    elif isinstance(exc, openai.NotFoundError):
        target = "deployment" if azure else "model or endpoint"
        fix = (
            "name an existing deployment (--embedder openai:DEPLOYMENT, --chat-model"
            f" DEPLOYMENT) and check {url_var}"
            if azure
            else f"check the model name (--embedder openai:MODEL, --chat-model) and {url_var}"
        )
        error = ConfigError(f"{what} failed: {target} not found (404): {_message(exc)}; {fix}")
    elif isinstance(exc, openai.BadRequestError):
        error = error_cls(f"{what} request rejected (400): {_message(exc)}")
    elif isinstance(exc, openai.APITimeoutError):
        error = error_cls(
            f"{what} timed out: the server did not answer in time; {again}"
            " (or raise RAGKIT_OPENAI_TIMEOUT)"
        )
    elif isinstance(exc, openai.APIConnectionError):
        cause = type(exc.__cause__).__name__ if exc.__cause__ else "connection error"
        if cause in CONNECT_FAILURES:
            error = error_cls(
                f"{what} failed: cannot reach the server{_origin(exc)} ({cause});"
                f" check {url_var} and your network, then {again}"
            )
        else:  # it was reached, then hung up: an overloaded or crashing server, or a proxy
            error = error_cls(
                f"{what} failed: the server{_origin(exc)} closed the connection without"
                f" answering ({cause}); check the server's health, then {again}"
            )
    elif isinstance(exc, openai.RateLimitError):
        error = error_cls(
            f"{what} failed: still rate limited after retrying (429): {_message(exc)};"
            f" {again}, or lower RAGKIT_OPENAI_CONCURRENCY"
        )
    elif isinstance(exc, openai.APIStatusError):
        error = error_cls(f"{what} failed with HTTP {exc.status_code}: {_message(exc)}; {again}")
    else:
        error = error_cls(f"{what} failed: {exc}")
    # Servers' messages are quoted above: squeeze them onto one line and mask anything secret.
    return type(error)(one_line(str(error)))


def redact(text: str) -> str:
    """``text`` with the configured keys, and anything that looks like a key, bearer token or
    URL password, masked."""
    for key in sorted(_KEYS, key=len, reverse=True):
        text = text.replace(key, "***")
    return _SECRET.sub("***", text)


def one_line(text: str) -> str:
    """``text`` redacted and squeezed onto one line."""
    return " ".join(redact(text).split())


def _is_azure(exc: Exception) -> bool:
    request = getattr(exc, "request", None)
    try:
        return request is not None and "api-version" in request.url.params
    except AttributeError:
        return False


def _origin(exc: Exception) -> str:
    request = getattr(exc, "request", None)
    try:
        url = request.url if request is not None else None
    except AttributeError:
        return ""
    if url is None:
        return ""
    port = f":{url.port}" if url.port else ""
    return f" at {url.scheme}://{url.host}{port}"


def _body(exc: Any) -> dict[str, Any]:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return inner
    return {}


def error_code(exc: Exception) -> str | None:
    """The error's ``code`` (or ``type``) from the response body, e.g. "insufficient_quota"."""
    body = _body(exc)
    code = body.get("code") or body.get("type") or getattr(exc, "code", None)
    return str(code) if code else None


def _message(exc: Exception) -> str:
    message = _body(exc).get("message")
    text = str(message) if message else str(exc)
    # Servers write long messages; the first sentence says what is wrong.
    return one_line(text)[:300]
