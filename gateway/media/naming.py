"""Server-generated ids and sanitized display names. Client text never reaches a key
(``gateway.storage.keys`` builds those from ids alone)."""

from __future__ import annotations

import re
import unicodedata
import uuid
from urllib.parse import quote

from gateway import errors

# projectId and the tenant claim: they become key segments. Always matched whole (fullmatch).
IDENTIFIER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MEDIA_ID_RE = re.compile(r"[0-9a-f]{32}")
_UNSAFE = re.compile(r'[\x00-\x1f\x7f"\\/:*?<>|]+')
_MAX_EXTENSION_CHARS = 16
_EXTENSION_RE = re.compile(rf"[^\W_]{{1,{_MAX_EXTENSION_CHARS}}}")  # letters and digits
UNNAMED = "unnamed"


def new_media_id() -> str:
    return uuid.uuid4().hex


def check_project_id(project_id: str) -> str:
    if not IDENTIFIER_RE.fullmatch(project_id) or ".." in project_id:
        raise errors.InvalidProjectId()
    return project_id


def display_name(filename: str, *, max_chars: int) -> str:
    """The client's filename reduced to a safe display name: the last segment of a Windows or
    POSIX path, no control characters. A name whose stem is all unsafe keeps its extension
    (``???.png`` -> ``unnamed.png``); one with nothing safe at all is ``unnamed``."""
    name = unicodedata.normalize("NFC", filename.replace("\\", "/").rsplit("/", 1)[-1])
    # Control and format characters (C1 controls, bidi overrides such as U+202E) can spoof.
    # Lone surrogates (Cs) cannot be encoded at all.
    name = "".join("_" if unicodedata.category(ch) in ("Cc", "Cf", "Cs") else ch for ch in name)
    name = _UNSAFE.sub("_", name)
    stem, dot, extension = name.rpartition(".")
    if dot and _EXTENSION_RE.fullmatch(extension) and not stem.strip(" ._"):
        name = f"{UNNAMED}.{extension}"
    name = name.strip(" ._")
    if len(name) > max_chars:
        stem, dot, extension = name.rpartition(".")
        room = max_chars - len(extension) - 1  # for the stem, when the extension is kept
        if dot and stem and 0 < len(extension) <= _MAX_EXTENSION_CHARS and room > 0:
            name = stem[:room].rstrip(" ._") + "." + extension
        else:
            name = name[:max_chars].rstrip(" ._")
    return name or UNNAMED[:max_chars]


def content_disposition(name: str, *, inline: bool = True) -> str:
    """RFC 6266: an ASCII fallback plus the exact name as RFC 5987 ext-value; ``inline: False``
    (see ``sniff.served_as``) makes a browser download the file instead of showing it."""
    fallback = name.encode("ascii", "replace").decode().replace("?", "_").replace('"', "_")
    disposition = "inline" if inline else "attachment"
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
