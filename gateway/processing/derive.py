"""Describe and derive: a stored file's properties and its variants (thumbnails, a video's poster
frame, a PDF's first page), all as WebP. Pure functions of a local file; they decode untrusted
media, so the worker runs them in a child process with memory and time limits (sandbox.py).

Images (Pillow): decoded at a reduced scale where the codec allows (JPEG ``draft()``), EXIF
orientation applied, colour converted to sRGB, decompression bombs refused. No variant carries
EXIF or XMP, so no GPS position. ``strip_gps`` also rewrites a JPEG original's EXIF segment
without its GPS directory and drops XMP packets that carry a position (a lossless byte-level
edit; other formats keep their original).
Videos (PyAV, FFmpeg in its wheel): duration, size, codec, and a poster frame.
Audio (PyAV): properties, a waveform, an Ogg Opus copy of uncompressed or lossless audio
(gateway/processing/audio.py).
A container that holds audio or video (MP4, WebM/Matroska, Ogg) is settled here by its streams
(an album cover attached to a song is no video): typed ``video/mp4`` but holding only audio, it
is ``audio/mp4`` (``Derived.mime``), and the other way round.
PDFs (pypdfium2): the page count and the first page.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageCms, ImageOps

from gateway.uploads.sniff_audio import twin

if TYPE_CHECKING:
    import av.container
    import av.stream

GPS_IFD = 0x8825
EXIF_IFD = 0x8769
MAKE, MODEL, ORIENTATION, DATETIME_ORIGINAL = 0x010F, 0x0110, 0x0112, 0x9003
WEBP_QUALITY = 80
_SRGB = ImageCms.createProfile("sRGB")


class Undecodable(ValueError):
    """The file cannot be described (corrupt, a decompression bomb, an unknown codec)."""


@dataclass(frozen=True)
class Variant:
    name: str  # e.g. "thumb-320"; stored as <media key dir>/<media id>/<name><extension>
    data: bytes
    content_type: str
    width: int | None  # None for a variant that is no picture (peaks, an audio copy)
    height: int | None
    extension: str = ".webp"
    path: Path | None = None  # a large variant is a file next to the original, ``data`` empty


@dataclass
class Derived:
    properties: dict[str, Any] = field(default_factory=dict)
    variants: list[Variant] = field(default_factory=list)
    cleaned_original: bytes | None = None  # the original without its GPS, when it had one
    mime: str = ""  # the type the streams settled on, when it is not the one given


@dataclass(frozen=True)
class AudioOptions:
    """Bounds, the waveform and the Opus copy of audio (gateway/processing/audio.py)."""

    waveform_points: int = 2000
    max_duration: float = 4 * 3600.0  # seconds, claimed or decoded
    max_samples: int = 4 * 3600 * 48_000 * 2  # per channel times channels, claimed or decoded
    max_decode_seconds: float = 600.0  # CPU seconds
    opus_min_bytes: int = 1 << 20
    opus_mono_bit_rate: int = 64_000
    opus_stereo_bit_rate: int = 96_000


@dataclass(frozen=True)
class DeriveOptions:
    thumbnail_sizes: tuple[int, ...] = (320, 1280)
    max_pixels: int = 50_000_000
    strip_gps: bool = False
    audio: AudioOptions = AudioOptions()


def derive(path: Path, mime: str, options: DeriveOptions) -> Derived:
    kind = mime.split("/", 1)[0]
    if kind == "image" and mime != "image/svg+xml":  # SVG is markup, not a raster to decode
        return _image(path, options)
    if kind in ("video", "audio"):
        return _audio_or_video(path, mime, options)
    if mime == "application/pdf":
        return _pdf(path, options)
    return Derived(properties={"format": mime})


# -- images ----------------------------------------------------------------------------------------
def _open_image(path: Path, options: DeriveOptions) -> Image.Image:
    Image.MAX_IMAGE_PIXELS = options.max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.size  # noqa: B018 - the header is read: a bomb raises here
            return image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Undecodable(f"The image is larger than {options.max_pixels} pixels.") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise Undecodable(f"The image cannot be decoded: {exc}") from exc


def _xmp_has_gps(image: Image.Image) -> bool:
    xmp = image.info.get("xmp") or b""
    if isinstance(xmp, str):
        xmp = xmp.encode()
    return b"GPSLatitude" in xmp or b"GPSLongitude" in xmp


def _image(path: Path, options: DeriveOptions) -> Derived:
    image = _open_image(path, options)
    exif = image.getexif()
    gps_found = bool(exif.get_ifd(GPS_IFD)) or _xmp_has_gps(image)
    orientation = int(exif.get(ORIENTATION, 1) or 1)
    width, height = image.size
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    properties: dict[str, Any] = {
        "width": width,
        "height": height,
        "format": image.format,
        "orientation": orientation,
        "gpsFound": gps_found,
        "gpsRemoved": False,
    }
    if exif.get(MAKE):
        properties["cameraMake"] = str(exif[MAKE]).strip("\0 ")
    if exif.get(MODEL):
        properties["cameraModel"] = str(exif[MODEL]).strip("\0 ")
    taken = exif.get_ifd(EXIF_IFD).get(DATETIME_ORIGINAL)
    if taken:
        properties["takenAt"] = str(taken).strip("\0 ")
    derived = Derived(properties=properties)
    try:
        for size in sorted(options.thumbnail_sizes):
            derived.variants.append(_thumbnail(path, options, size))
    except (OSError, ValueError, SyntaxError) as exc:
        raise Undecodable(f"The image cannot be decoded: {exc}") from exc
    if options.strip_gps and gps_found and image.format == "JPEG":
        derived.cleaned_original = strip_jpeg_gps(path.read_bytes())
        properties["gpsRemoved"] = True
    return derived


def _thumbnail(path: Path, options: DeriveOptions, size: int) -> Variant:
    image = _open_image(path, options)
    image.draft("RGB", (size, size))  # JPEG: decode at 1/2, 1/4 or 1/8 scale when that suffices
    # In place: an upright photo (most of them) is not copied (bench/processing.py: a copy of
    # the decoded pixels per thumbnail, and the fresh pages a job's new process fills with it).
    ImageOps.exif_transpose(image, in_place=True)
    icc = image.info.get("icc_profile")
    if icc:
        try:
            converted = ImageCms.profileToProfile(
                image,
                ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                _SRGB,
                outputMode="RGBA" if image.mode in ("RGBA", "LA", "PA") else "RGB",
            )
            if converted is not None:
                image = converted
        except ImageCms.PyCMSError:
            pass  # a broken profile: keep the pixels as they are
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, "WEBP", quality=WEBP_QUALITY)  # no exif= / xmp=: no metadata at all
    return Variant(f"thumb-{size}", out.getvalue(), "image/webp", image.width, image.height)


def _webp_variant(name: str, image: Image.Image, size: int) -> Variant:
    image = image.convert("RGB")
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, "WEBP", quality=WEBP_QUALITY)
    return Variant(name, out.getvalue(), "image/webp", image.width, image.height)


# -- audio, videos and PDFs ------------------------------------------------------------------------
def _audio_or_video(path: Path, mime: str, options: DeriveOptions) -> Derived:
    import av

    from gateway.processing.audio import derive_audio

    try:
        with av.open(str(path), metadata_errors="replace") as container:
            settled = settled_type(
                mime,
                has_video=any(is_visual(s) for s in container.streams.video),
                has_audio=bool(container.streams.audio),
            )
            if settled.startswith("video/"):
                derived = _video(container, options)
            else:
                derived = derive_audio(container, path, settled, options.audio)
    except av.FFmpegError as exc:
        kind = mime.split("/", 1)[0]
        raise Undecodable(f"The {kind} cannot be decoded: {ffmpeg_reason(exc)}.") from exc
    if settled != mime:
        derived.mime = settled
    return derived


def is_visual(stream: av.stream.Stream) -> bool:
    """A video stream that is a video (not an album cover attached to a song)."""
    import av.stream

    return not stream.disposition & av.stream.Disposition.attached_pic


def ffmpeg_reason(exc: Exception) -> str:
    """FFmpeg's words for what went wrong, without the scratch file's path."""
    return str(getattr(exc, "strerror", None) or exc)


def settled_type(mime: str, *, has_video: bool, has_audio: bool) -> str:
    """The type of a file by its streams: a container typed as holding video (``video/mp4``,
    ``video/webm``, ...) that holds only audio is its audio twin, and the other way round;
    every other type stays as sniffed."""
    other = twin(mime)
    if not other:
        return mime
    if has_video:
        return mime if mime.startswith("video/") else other
    if has_audio:
        return mime if mime.startswith("audio/") else other
    raise Undecodable("The file holds neither audio nor video.")


def _video(container: av.container.InputContainer, options: DeriveOptions) -> Derived:
    import av

    stream = next((s for s in container.streams.video if is_visual(s)), None)
    if stream is None:
        raise Undecodable("The video has no video stream.")
    duration = float(container.duration / 1_000_000) if container.duration else None
    properties: dict[str, Any] = {
        "width": stream.codec_context.width,
        "height": stream.codec_context.height,
        "format": container.format.name,
        "codec": stream.codec_context.name,
        "duration": duration,
    }
    if duration and duration > 2:
        container.seek(int(min(1.0, duration / 10) * 1_000_000))
    frame = next(container.decode(stream), None)
    if not isinstance(frame, av.VideoFrame):
        raise Undecodable("The video has no frame to show.")
    poster = frame.to_image()  # type: ignore[no-untyped-call]
    if poster.width * poster.height > options.max_pixels:
        raise Undecodable("The video's frames are too large.")
    return Derived(
        properties=properties,
        variants=[_webp_variant("poster", poster, max(options.thumbnail_sizes))],
    )


def _pdf(path: Path, options: DeriveOptions) -> Derived:
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(str(path))
        try:
            pages = len(pdf)
            if pages == 0:
                raise Undecodable("The PDF has no pages.")
            page = pdf[0]
            width, height = page.get_size()
            longest = max(options.thumbnail_sizes)
            scale = min(4.0, longest / max(width, height, 1))
            preview = page.render(scale=scale).to_pil()
        finally:
            pdf.close()
    except pdfium.PdfiumError as exc:
        raise Undecodable(f"The PDF cannot be read: {exc}") from exc
    return Derived(
        properties={
            "pageCount": pages,
            "width": round(width),
            "height": round(height),
            "format": "PDF",
        },
        variants=[_webp_variant("preview", preview, longest)],
    )


# -- GPS out of a JPEG, losslessly ------------------------------------------------------------
def strip_jpeg_gps(data: bytes) -> bytes:
    """The JPEG with its EXIF GPS directory removed and XMP packets that carry a position
    dropped; every other byte (the compressed image included) is kept."""
    if not data.startswith(b"\xff\xd8"):
        raise Undecodable("Not a JPEG file.")
    out, pos = [data[:2]], 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise Undecodable("Malformed JPEG segment.")
        marker = data[pos + 1]
        if marker == 0xDA:  # start of scan: the rest is image data
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        segment = data[pos : pos + 2 + length]
        body = segment[4:]
        if marker == 0xE1 and body.startswith(b"Exif\0\0"):
            exif = Image.Exif()
            exif.load(body[6:])
            if GPS_IFD in exif:
                del exif[GPS_IFD]
            payload = b"Exif\0\0" + exif.tobytes()
            segment = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
        elif marker == 0xE1 and (b"GPSLatitude" in body or b"GPSLongitude" in body):
            segment = b""  # an XMP packet with a position
        out.append(segment)
        pos += 2 + length
    out.append(data[pos:])
    return b"".join(out)
