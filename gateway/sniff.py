"""Content sniffing: the type of a file is what its first bytes say, never what the client says."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

import filetype

SNIFF_BYTES = 8192  # filetype's signature window


@dataclass(frozen=True)
class SniffedType:
    mime: str
    extension: str  # with the dot, e.g. ".jpg"

    @property
    def file_type(self) -> str:
        major = self.mime.split("/", 1)[0]
        return major if major in ("image", "video") else "other"


def sniff(head: bytes) -> SniffedType | None:
    kind = filetype.guess(head)
    if kind is None:
        return None
    return SniffedType(mime=kind.mime, extension="." + kind.extension)


def is_allowed(mime: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(mime, pattern) for pattern in patterns)
