"""Server-generated keys and sanitized display names. Client text never reaches a key."""
from __future__ import annotations

import re
import unicodedata
import uuid
from urllib.parse import quote

from .errors import BadRequest

PROJECT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_UNSAFE = re.compile(r'[\x00-\x1f\x7f"\\/:*?<>|]+')


def new_media_id() -> str:
    return uuid.uuid4().hex


def check_project_id(project_id: str) -> str:
    if not PROJECT_ID_RE.match(project_id) or ".." in project_id:
        raise BadRequest("projectId must be 1-64 letters, digits, '.', '_' or '-'.",
                         code="invalid_project_id")
    return project_id


def object_key(*, tenant: str, project_id: str, media_id: str, extension: str) -> str:
    prefix = f"{tenant}/" if tenant else ""
    return f"{prefix}projects/{project_id}/media/{media_id}{extension}"


def media_id_of_key(key: str) -> str | None:
    """The media id a gateway-made key carries, or None for a key the gateway did not make."""
    match = re.search(r"(?:^|/)projects/[^/]+/media/([0-9a-f]{32})(?:\.[A-Za-z0-9]+)?$", key)
    return match.group(1) if match else None


def display_name(filename: str, *, max_chars: int) -> str:
    """The client's filename reduced to a safe display name: no path, no control characters."""
    name = unicodedata.normalize("NFC", filename.replace("\\", "/").rsplit("/", 1)[-1])
    # Control and format characters (C1 controls, bidi overrides such as U+202E) can spoof.
    name = "".join("_" if unicodedata.category(ch) in ("Cc", "Cf") else ch for ch in name)
    name = _UNSAFE.sub("_", name).strip(" ._")
    if len(name) > max_chars:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 16:
            name = stem[: max_chars - len(ext) - 1] + "." + ext
        else:
            name = name[:max_chars]
    return name or "unnamed"


def content_disposition(name: str) -> str:
    """RFC 6266: an ASCII fallback plus the exact name as RFC 5987 ext-value."""
    fallback = name.encode("ascii", "replace").decode().replace("?", "_").replace('"', "_")
    return f"inline; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
