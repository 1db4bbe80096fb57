"""One short query to an OpenAI ``/embeddings`` endpoint over the standard library's HTTP.

A cold ``ragkit search`` embeds one query, and importing the ``openai`` SDK alone takes seconds
on a loaded machine: the first query of an ``OpenAIEmbedder`` goes out through ``urllib``
instead. Only a clean 200 is used; anything else (an HTTP error, a refused connection, a
timeout) returns None and the SDK path sends the request again, with its retries and its
one-line explanations, so errors read exactly as they always did.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"

# post(texts) -> the response body of a 200, or None
Post = Callable[[list[str]], "bytes | None"]


def poster(model: str, *, api_key: str | None, base_url: str | None, timeout: float) -> Post:
    """A function that POSTs texts to ``base_url``/embeddings as the SDK would (base64 floats)."""
    url = (base_url or DEFAULT_BASE_URL).rstrip("/") + "/embeddings"
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        # The SDK sends a placeholder when only a base URL is set; do the same.
        "Authorization": f"Bearer {api_key or 'not-needed'}",
    }
    # The SDK bills the organization and project these variables name: so must this request.
    for variable, header in (
        ("OPENAI_ORG_ID", "OpenAI-Organization"),
        ("OPENAI_PROJECT_ID", "OpenAI-Project"),
    ):
        if os.environ.get(variable):
            headers[header] = os.environ[variable]

    def post(texts: list[str]) -> bytes | None:
        body = json.dumps({"model": model, "input": texts, "encoding_format": "base64"}).encode()
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if response.status != 200:
                    return None
                content: bytes = response.read()
                return content
        except (urllib.error.URLError, OSError, ValueError) as exc:
            # Not hidden: the SDK path sends the request again and reports what goes wrong.
            log.debug("direct embedding request failed (%s); using the openai SDK", exc)
            return None

    return post
