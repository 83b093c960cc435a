"""What re-encoding an image would save, measured by doing it (Pillow), in memory.

The user's file is never changed: ``advise`` only reads it, and ``push --optimize`` queues the
smaller encoding as the outbox's copy (keeping the original's EXIF and ICC profile, rotated
upright), and only when it saves at least ``MIN_SAVING``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

FORMATS = {"webp": ("WEBP", ".webp"), "avif": ("AVIF", ".avif")}
MIN_SAVING = 0.10


@dataclass(frozen=True)
class Encoding:
    format: str
    quality: int
    size: int
    original_size: int

    @property
    def saving(self) -> float:
        return 1 - self.size / self.original_size if self.original_size else 0.0


def _encode(
    image: Image.Image, pil_format: str, quality: int, exif: bytes, icc: bytes | None
) -> bytes:
    out = io.BytesIO()
    options: dict[str, object] = {"quality": quality}
    if exif:
        options["exif"] = exif
    if icc:
        options["icc_profile"] = icc
    image.save(out, pil_format, **options)
    return out.getvalue()


def _open(path: Path) -> tuple[Image.Image, bytes, bytes | None] | None:
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened) or opened
            exif = image.getexif()
            exif_bytes = exif.tobytes() if len(exif) else b""
            icc = opened.info.get("icc_profile")
            if image.mode not in ("RGB", "RGBA", "L", "LA"):
                image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
            return image, exif_bytes, icc
    except (UnidentifiedImageError, OSError):
        return None


def _trials(path: Path, quality: dict[str, int] | None) -> list[tuple[Encoding, bytes]] | None:
    wanted = quality or {"webp": 80, "avif": 60}
    opened = _open(path)
    if opened is None:
        return None
    image, exif, icc = opened
    original = path.stat().st_size
    trials = []
    for name, q in wanted.items():
        data = _encode(image, FORMATS[name][0], q, exif, icc)
        trials.append((Encoding(name, q, len(data), original), data))
    return sorted(trials, key=lambda trial: trial[0].size)


def advise(path: Path, *, quality: dict[str, int] | None = None) -> list[Encoding] | None:
    """Each candidate encoding's size, smallest first; None if ``path`` is not an image."""
    trials = _trials(path, quality)
    return None if trials is None else [encoding for encoding, _ in trials]


def optimize(path: Path, target_dir: Path, *, quality: dict[str, int] | None = None) -> Path | None:
    """The smallest encoding written under ``target_dir`` if it saves enough, else None."""
    trials = _trials(path, quality)
    if not trials or trials[0][0].saving < MIN_SAVING:
        return None
    best, data = trials[0]
    target = target_dir / (path.stem + FORMATS[best.format][1])
    target.write_bytes(data)
    return target
