"""Where a browser form post may send the browser afterwards (its ``redirect`` field), and the
outcome appended to that URL, as S3's ``success_action_redirect`` does. No Flask in here.

A redirect is either a path on the gateway itself (``/...``, never ``//host`` nor a backslash
that browsers read as a slash) or an absolute http(s) URL on an allow-listed origin: never an
open redirect that a link could aim at another site.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

from gateway import errors
from gateway.config import origin_of

MAX_REDIRECT_CHARS = 2048


def check_redirect(url: str, allowed_origins: Iterable[str]) -> str:
    """``url`` if a form may redirect there, else ``InvalidRedirect``."""
    if len(url) > MAX_REDIRECT_CHARS or any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise errors.InvalidRedirect()
    if "\\" in url:
        raise errors.InvalidRedirect()
    if url.startswith("/"):
        if url.startswith("//"):
            raise errors.InvalidRedirect()
        return url
    origin = origin_of(url)
    if origin is None or origin not in {o.lower() for o in allowed_origins}:
        raise errors.InvalidRedirect(
            "redirect must be a path on the gateway or a URL on an allowed origin "
            "(GATEWAY_REDIRECT_ORIGINS)."
        )
    return url


def with_outcome(url: str, params: list[tuple[str, str]]) -> str:
    """``url`` with ``params`` appended to its query (its own parameters and fragment kept)."""
    parts = urlparse(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + params
    return urlunparse(parts._replace(query=urlencode(query)))
