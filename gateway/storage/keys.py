"""Object keys: where an original, its variants and a direct upload's staging copy live, and the
media id a gateway-made key carries. Built from checked identifiers only, never client text."""

from __future__ import annotations

import re

# .../media/<id>.<ext> (the original) or .../media/<id>/<variant>.<webp|png|json|ogg> (derived
# files: thumbnails, posters and previews; an audio file's waveform, peaks and Opus copy)
_KEY_RE = re.compile(
    r"(?:^|/)projects/[^/]+/media/([0-9a-f]{32})"
    r"(?:\.[A-Za-z0-9]+|/[a-z0-9-]{1,32}\.(?:webp|png|json|ogg))?"
)
STAGING_SUFFIX = ".upload"  # where a direct upload's single PUT/POST writes (key + suffix)


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
