"""Server-generated keys and sanitized display names. Client text never reaches a key."""

from __future__ import annotations

import re
import unicodedata
import uuid
from urllib.parse import quote

from gateway import errors

# projectId and the tenant claim: they become key segments. Always matched whole (fullmatch).
IDENTIFIER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MEDIA_ID_RE = re.compile(r"[0-9a-f]{32}")
# .../media/<id>.<ext> (the original) or .../media/<id>/<variant>.webp (derived files)
_KEY_RE = re.compile(
    r"(?:^|/)projects/[^/]+/media/([0-9a-f]{32})(?:\.[A-Za-z0-9]+|/[a-z0-9-]{1,32}\.webp)?"
)
_UNSAFE = re.compile(r'[\x00-\x1f\x7f"\\/:*?<>|]+')
_MAX_EXTENSION_CHARS = 16
_EXTENSION_RE = re.compile(rf"[^\W_]{{1,{_MAX_EXTENSION_CHARS}}}")  # letters and digits
UNNAMED = "unnamed"
STAGING_SUFFIX = ".upload"  # where a direct upload's single PUT/POST writes (key + suffix)


def new_media_id() -> str:
    return uuid.uuid4().hex


def check_project_id(project_id: str) -> str:
    if not IDENTIFIER_RE.fullmatch(project_id) or ".." in project_id:
        raise errors.InvalidProjectId()
    return project_id


def object_key(*, tenant: str, project_id: str, media_id: str, extension: str) -> str:
    prefix = f"{tenant}/" if tenant else ""
    return f"{prefix}projects/{project_id}/media/{media_id}{extension}"


def media_id_of_key(key: str) -> str | None:
    """The media id a gateway-made key (an original or a variant) carries, or None for a key
    the gateway did not make."""
    match = _KEY_RE.search(key)
    return match.group(1) if match and match.end() == len(key) else None


def staging_key(key: str) -> str:
    """Where a direct upload's single PUT/POST writes; ``complete`` copies it to ``key`` once
    checked (the sweeper removes what is left there)."""
    return key + STAGING_SUFFIX


def parse_key(key: str) -> tuple[str | None, bool]:
    """(media id, whether it is a staging key) of a gateway-made key; (None, False) otherwise."""
    if key.endswith(STAGING_SUFFIX):
        media_id = media_id_of_key(key[: -len(STAGING_SUFFIX)])
        return (media_id, True) if media_id else (None, False)
    return media_id_of_key(key), False


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
