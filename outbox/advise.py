"""What re-encoding a file would save, measured by doing it; the user's file is only read.

Images: WebP and AVIF (Pillow), in memory. Audio: Ogg Opus (PyAV), streamed: the file is decoded
one packet at a time and the encoding is counted as it is written, never held, so memory does not
grow with the recording's length. The Opus bit rate is ``AudioOptions.bitrate``, by default
64 kb/s mono, 96 kb/s stereo and 48 kb/s per channel beyond. A recording longer than
``measure_seconds`` (60 s) is measured on its first ``measure_seconds`` and its Opus size and
encoding time are extrapolated to its whole duration (``Encoding.estimated``).

The advice, with its reason (``recommend_image``, ``recommend_audio``): audio that is already
compressed (every codec but PCM and the lossless ones: MP3, AAC, Opus, Vorbis, ...) is left as it
is, since a second lossy encoding costs quality for little; so is audio under ``min_size``
(1 MiB), and any file whose best encoding saves less than ``MIN_SAVING``. Otherwise: re-encode.
A file that does not decode to its end, or holds no sound at all, gets no advice (None).

``push --optimize`` queues the smaller copy when the advice is to re-encode (audio encoded whole,
never a prefix), keeping the original's EXIF and ICC profile (rotated upright) or its tags.
A file with a video track is not advised (its sound is not re-encoded on its own).
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import av
from av.audio.stream import AudioStream
from av.container import InputContainer
from av.stream import Disposition
from PIL import Image, ImageOps, UnidentifiedImageError

FORMATS = {"webp": ("WEBP", ".webp"), "avif": ("AVIF", ".avif")}
MIN_SAVING = 0.10
AUDIO_MIN_SIZE = 1024 * 1024
MEASURE_SECONDS = 60.0
OPUS_BITRATES = (6_000, 510_000)  # what an Opus stream can carry, bit/s (RFC 6716)
OPUS_EXTENSION = ".opus"  # Ogg Opus (RFC 7845)
# Codecs that keep every sample (PCM is every codec named pcm_*): worth re-encoding to Opus.
LOSSLESS_AUDIO = frozenset({"flac", "alac", "wavpack", "ape", "tta", "tak", "mlp", "truehd"})
_BITRATE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]?)(?:bit/s|bits/s|bit|bps)?", re.IGNORECASE)
_PREFIXES = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}

Clock = Callable[[], float]


@dataclass(frozen=True)
class Encoding:
    format: str
    size: int
    original_size: int
    quality: int | None = None  # images
    bitrate: int | None = None  # audio, bit/s
    seconds: float = 0.0  # the encoding's time on this machine
    estimated: bool = False  # size and time extrapolated from a measured prefix

    @property
    def saving(self) -> float:
        return 1 - self.size / self.original_size if self.original_size else 0.0

    def transfer_seconds_saved(self, uplink: int) -> float:
        """Seconds less to send at ``uplink`` bit/s (negative when the encoding is larger)."""
        return (self.original_size - self.size) * 8 / uplink


@dataclass(frozen=True)
class AudioInfo:
    container: str
    codec: str
    sample_rate: int
    channels: int
    duration: float  # seconds: decoded, or the container's when only a prefix was measured
    measured_seconds: float  # how much was decoded and encoded to measure


@dataclass(frozen=True)
class Advice:
    kind: str  # "image" or "audio"
    original_size: int
    encodings: tuple[Encoding, ...]  # smallest first
    reencode: bool
    reason: str
    audio: AudioInfo | None = None


@dataclass(frozen=True)
class AudioOptions:
    bitrate: int | None = None  # bit/s; None: by the number of channels (opus_bitrate)
    min_size: int = AUDIO_MIN_SIZE  # smaller audio files are left as they are
    measure_seconds: float = MEASURE_SECONDS  # longer recordings are measured on a prefix


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


class _Counter:
    """A write-only file that counts what is written to it: the measured encoding is not kept."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)


# -- the rules -------------------------------------------------------------------------------------
def parse_bitrate(text: str) -> int:
    """Bits per second from ``256kbit``, ``1Mbit``, ``10Mbit/s``, ``64k``, ``1.5Mbps``, ``96000``
    (k, M, G are powers of 1000); ValueError for anything else, zero included."""
    match = _BITRATE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a bit rate (e.g. 96000, 64k, 256kbit, 1Mbit, 10Mbit/s)")
    bits = round(float(match.group(1)) * _PREFIXES[match.group(2).lower()])
    if bits <= 0:
        raise ValueError(f"{text!r} is not a bit rate above zero")
    return bits


def opus_bitrate(channels: int, chosen: int | None = None) -> int:
    """``chosen``, else 64 kb/s mono, 96 kb/s stereo, 48 kb/s per channel beyond."""
    if chosen is not None:
        return chosen
    if channels == 1:
        return 64_000
    if channels == 2:
        return 96_000
    return 48_000 * channels


def is_compressed(codec: str) -> bool:
    """Lossy audio (``codec`` is FFmpeg's name: mp3, aac, opus, vorbis, ...)."""
    return not (codec.startswith("pcm_") or codec in LOSSLESS_AUDIO)


def not_worth_encoding(codec: str, original_size: int, min_size: int) -> str | None:
    """Why an audio file is left as it is whatever Opus would save, or None."""
    if is_compressed(codec):
        return f"already compressed ({codec})"
    if original_size < min_size:
        return f"under the threshold ({original_size} < {min_size} bytes)"
    return None


def recommend_audio(
    codec: str, original_size: int, saving: float, min_size: int
) -> tuple[bool, str]:
    """Re-encode to Opus, or not, and why."""
    reason = not_worth_encoding(codec, original_size, min_size)
    if reason is not None:
        return False, reason
    if saving < MIN_SAVING:
        return False, f"opus saves {saving:.0%}, under {MIN_SAVING:.0%}"
    kind = "uncompressed" if codec.startswith("pcm_") else "lossless"
    return True, f"{kind} ({codec}); opus saves {saving:.0%}"


def recommend_image(best: Encoding) -> tuple[bool, str]:
    """Re-encode as the ``best`` (smallest) encoding, or not, and why."""
    if best.saving < MIN_SAVING:
        return False, f"{best.format} saves {best.saving:.0%}, under {MIN_SAVING:.0%}"
    return True, f"{best.format} saves {best.saving:.0%}"


# -- images ----------------------------------------------------------------------------------------
def _encode_image(
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


def _open_image(path: Path) -> tuple[Image.Image, bytes, bytes | None] | None:
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened) or opened
            exif = image.getexif()
            exif_bytes = exif.tobytes() if len(exif) else b""
            icc = opened.info.get("icc_profile")
            return image, exif_bytes, icc  # Pillow's WebP and AVIF writers convert other modes
    except (UnidentifiedImageError, OSError):
        return None


def _image_trials(
    path: Path, quality: dict[str, int] | None, clock: Clock
) -> list[tuple[Encoding, bytes]] | None:
    wanted = quality or {"webp": 80, "avif": 60}
    opened = _open_image(path)
    if opened is None:
        return None
    image, exif, icc = opened
    original = path.stat().st_size
    trials = []
    for name, q in wanted.items():
        start = clock()
        data = _encode_image(image, FORMATS[name][0], q, exif, icc)
        seconds = clock() - start
        trials.append((Encoding(name, len(data), original, quality=q, seconds=seconds), data))
    return sorted(trials, key=lambda trial: trial[0].size)


# -- audio -----------------------------------------------------------------------------------------
def _audio_stream(container: InputContainer) -> AudioStream | None:
    """The first audio track of a file without video (a cover picture is not video)."""
    if any(not s.disposition & Disposition.attached_pic for s in container.streams.video):
        return None
    return container.streams.audio[0] if container.streams.audio else None


def _codec(stream: AudioStream) -> str:
    return stream.codec_context.codec.canonical_name  # "mp3", not its decoder's "mp3float"


def _header_duration(container: InputContainer) -> float | None:
    """What the file says (None in a recording streamed as it was made: MediaRecorder's WebM)."""
    return None if container.duration is None else container.duration / av.time_base


def _frames(container: InputContainer, stream: AudioStream) -> Iterator[av.AudioFrame]:
    for packet in container.demux(stream):
        yield from packet.decode()


def _encode_audio(
    container: InputContainer, stream: AudioStream, sink: _Sink, bitrate: int, limit: float | None
) -> tuple[float, bool]:
    """Write ``stream`` to ``sink`` as Ogg Opus, one decoded packet at a time, with the file's
    tags; stop after ``limit`` seconds. Returns the seconds decoded and whether that is all.
    PyAV opens libopus at its first rate, 48 kHz, and its encoder resamples each frame to that
    rate and libopus's sample format and cuts them into Opus frames."""
    samples, rate, complete = 0, stream.rate, True
    with av.open(sink, "w", format="ogg") as out:
        out.metadata.update({**container.metadata, **stream.metadata})
        opus = out.add_stream("libopus", layout=stream.layout.name)
        opus.bit_rate = bitrate
        for frame in _frames(container, stream):
            samples, rate = samples + frame.samples, frame.sample_rate
            frame.pts = None  # timed again by the encoder, at its own rate
            out.mux(opus.encode(frame))
            if limit is not None and samples >= limit * rate:
                complete = False
                break
        out.mux(opus.encode(None))
    return samples / rate, complete  # ZeroDivisionError: no rate and no frame


def _advise_audio(path: Path, options: AudioOptions, clock: Clock) -> Advice | None:
    original = path.stat().st_size
    try:
        with av.open(str(path)) as container:
            stream = _audio_stream(container)
            if stream is None:
                return None
            header_duration = _header_duration(container)
            long = header_duration is not None and header_duration > options.measure_seconds
            bitrate = opus_bitrate(stream.channels, options.bitrate)
            sink = _Counter()
            start = clock()
            decoded, complete = _encode_audio(
                container, stream, sink, bitrate, options.measure_seconds if long else None
            )
            seconds = clock() - start
            duration = decoded if complete or header_duration is None else header_duration
            info = AudioInfo(
                container.format.name, _codec(stream), stream.rate, stream.channels, duration,
                decoded,
            )  # fmt: skip
    except (av.FFmpegError, ValueError, ZeroDivisionError):
        return None  # not audio PyAV can decode, or damaged
    if decoded == 0:
        return None  # no sound to encode (the Ogg muxer writes nothing for it)
    scale = duration / decoded  # 1.0 when measured whole
    encoding = Encoding(
        "opus", round(sink.size * scale), original, bitrate=bitrate, seconds=seconds * scale,
        estimated=not complete,
    )  # fmt: skip
    reencode, reason = recommend_audio(info.codec, original, encoding.saving, options.min_size)
    return Advice("audio", original, (encoding,), reencode, reason, info)


def _optimize_audio(path: Path, target_dir: Path, options: AudioOptions) -> Path | None:
    original = path.stat().st_size
    target = target_dir / (path.stem + OPUS_EXTENSION)
    try:
        with av.open(str(path)) as container:
            stream = _audio_stream(container)
            if stream is None:
                return None
            codec = _codec(stream)
            if not_worth_encoding(codec, original, options.min_size) is not None:
                return None  # no need to encode to know
            bitrate = opus_bitrate(stream.channels, options.bitrate)
            with target.open("wb") as sink:
                decoded, _ = _encode_audio(container, stream, sink, bitrate, None)
    except (av.FFmpegError, ValueError, ZeroDivisionError):
        target.unlink(missing_ok=True)
        return None
    saving = 1 - target.stat().st_size / original
    if decoded == 0 or not recommend_audio(codec, original, saving, options.min_size)[0]:
        target.unlink()
        return None
    return target


# -- both ------------------------------------------------------------------------------------------
def advise(
    path: Path,
    *,
    quality: dict[str, int] | None = None,
    audio: AudioOptions = AudioOptions(),
    clock: Clock = time.perf_counter,
) -> Advice | None:
    """The measured encodings of an image or an audio file and the advice; None for anything
    else (or a file that does not decode)."""
    trials = _image_trials(path, quality, clock)
    if trials is None:
        return _advise_audio(path, audio, clock)
    encodings = tuple(encoding for encoding, _ in trials)
    reencode, reason = recommend_image(encodings[0])
    return Advice("image", path.stat().st_size, encodings, reencode, reason)


def optimize(
    path: Path,
    target_dir: Path,
    *,
    quality: dict[str, int] | None = None,
    audio: AudioOptions = AudioOptions(),
) -> Path | None:
    """The smaller encoding written under ``target_dir`` when the advice is to re-encode, else
    None (nothing left under ``target_dir``)."""
    trials = _image_trials(path, quality, time.perf_counter)
    if trials is None:
        return _optimize_audio(path, target_dir, audio)
    best, data = trials[0]
    if not recommend_image(best)[0]:
        return None
    target = target_dir / (path.stem + FORMATS[best.format][1])
    target.write_bytes(data)
    return target
