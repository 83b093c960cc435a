"""Audio files: describe, measure a waveform and (for uncompressed or lossless audio) make an Ogg
Opus copy, in one pass over the decoded samples (PyAV: FFmpeg in its wheel).

Decoding streams: frames go one at a time to FFmpeg's ``astats`` filter (the minimum and maximum
of each channel per bucket of samples: gateway/processing/audio_waveform.py keeps them as
points) and, when there is one, to the Opus encoder, whose output goes to a file next to the
original. Memory does not grow with the audio's length (bench/audio.py: 10 and 60 minutes).

Bounds, so that a small file cannot make the worker decode for hours (an audio bomb):
- before decoding, the duration the file's header declares (where it is the header's, not an
  estimate: see ``claimed_seconds``) may not exceed ``max_duration``, nor its samples (per
  channel, times channels) ``max_samples``;
- while decoding, the same two limits on what was decoded so far, and ``max_decode_seconds``
  of CPU time (the child's, all its threads: a busy machine does not make a file a bomb; the
  sandbox's wall-clock deadline for audio is this plus GATEWAY_SANDBOX_TIMEOUT).
A file whose decoder reports an error is damaged (failed, with the position); one that decodes
to markedly less than its header declares is truncated (failed, with both durations).
"""

from __future__ import annotations

import itertools
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.processing.audio_waveform import Peaks, samples_per_bucket, to_16_bits
from gateway.processing.derive import (
    AudioOptions,
    Derived,
    Undecodable,
    Variant,
    ffmpeg_reason,
)

if TYPE_CHECKING:
    import av
    import av.container

OPUS_RATE = 48_000
OPUS_NAME, PEAKS_NAME, WAVEFORM_NAME = "opus", "peaks", "waveform"
TAGS = ("title", "artist", "album", "date", "comment", "encoder")
MAX_TAG_CHARS = 1024
# Decoding to less than the header says by more than this is truncation (what encoders'
# priming and padding make the two differ by: an Opus pre-skip is at most 80 ms).
TRUNCATION_SLACK_SECONDS = 0.1
# The demuxers whose duration is the header's (never an estimate from the bit rate): MP4's
# mdhd, Matroska's Info/Duration, FLAC's STREAMINFO, AIFF's COMM, Ogg's last granule position.
# WAV's and CAF's are read here (FFmpeg cuts them to the file); MP3's only with a Xing, Info or
# VBRI frame.
_DECLARING = ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "flac", "aiff", "ogg")
_CONTAINERS = {"mov,mp4,m4a,3gp,3g2,mj2": "mp4", "matroska,webm": "matroska", "aac": "adts"}
# What astats' levels are in, per sample format: 16-bit units, 32-bit units, or -1.0 .. 1.0.
_SCALES = {"s16": 1.0, "s32": 1 / 65536, "flt": 32768.0, "dbl": 32768.0}


def derive_audio(
    container: av.container.InputContainer, path: Path, mime: str, options: AudioOptions
) -> Derived:
    """Properties and variants of the audio ``container`` (opened from ``path``): peaks (JSON),
    waveform (PNG) and, for uncompressed or lossless audio, opus (Ogg Opus, written next to
    ``path`` and returned by its path)."""
    if not container.streams.audio:
        raise Undecodable("The file has no audio stream.")
    stream = container.streams.audio[0]
    codec = stream.codec_context.codec
    rate, channels = stream.codec_context.sample_rate, stream.codec_context.channels
    if not rate or not channels:
        raise Undecodable("The audio has no sample rate or no channels.")
    deadline = time.process_time() + options.max_decode_seconds
    claimed = claimed_seconds(container, stream, path)
    if claimed is not None:
        _check_claim(claimed, rate, channels, options)
    estimate = claimed if claimed is not None else _demuxed_seconds(path)
    lossless = codec.lossless  # PCM, FLAC, ALAC, WavPack (FFmpeg's codec descriptors)
    size = path.stat().st_size
    bit_rate = options.opus_mono_bit_rate if channels == 1 else options.opus_stereo_bit_rate
    skipped = _no_opus_because(codec.canonical_name, lossless, size, estimate, bit_rate, options)
    opus_path = path.with_name(f"{OPUS_NAME}.ogg")
    opus = _Opus(opus_path, channels, bit_rate) if not skipped else None
    peaks = Peaks(
        channels=channels,
        samples_per_bucket=samples_per_bucket(estimate * rate if estimate else None,
                                              options.waveform_points),
        max_points=options.waveform_points,
    )  # fmt: skip
    try:
        decoded = _decode(container, stream, peaks, opus, options, deadline)
    finally:
        if opus is not None:
            opus.close()
    seconds = decoded / rate
    if decoded == 0:
        raise Undecodable("No audio could be decoded from the file.")
    if container.format.name == "ogg" and ogg_cut(path):
        raise Undecodable(
            f"The audio is truncated: the file ends inside an Ogg page, after {seconds:.3f} s."
        )
    if claimed is not None and seconds < claimed - TRUNCATION_SLACK_SECONDS:
        raise Undecodable(
            f"The audio is truncated: its header says {claimed:.3f} s, the file holds "
            f"{seconds:.3f} s."
        )
    properties: dict[str, Any] = {
        "duration": round(seconds, 6),
        "codec": codec.canonical_name,
        "container": _CONTAINERS.get(container.format.name, container.format.name),
        "sampleRate": rate,
        "channels": channels,
        "channelLayout": stream.codec_context.layout.name,
        "bitRate": _bit_rate(stream, container, size, seconds),
        "lossless": lossless,
        "tags": _tags(container, stream),
    }
    if container.format.name == "matroska,webm" and mime == "audio/webm":
        properties["container"] = "webm"
    png, width, height = peaks.to_png()
    variants = [
        Variant(PEAKS_NAME, peaks.to_json(rate), "application/json", None, None, extension=".json"),
        Variant(WAVEFORM_NAME, png, "image/png", width, height, extension=".png"),
    ]
    if opus is not None:
        made = opus_path.stat().st_size
        properties["transcode"] = {"codec": "opus", "bitRate": bit_rate, "size": made}
        variants.append(
            Variant(OPUS_NAME, b"", "audio/ogg", None, None, extension=".ogg", path=opus_path)
        )
    else:
        properties["transcode"] = {"skipped": skipped}
    return Derived(properties=properties, variants=variants)


def _check_claim(claimed: float, rate: int, channels: int, options: AudioOptions) -> None:
    if claimed > options.max_duration:
        raise Undecodable(
            f"The audio claims to last {claimed:.0f} s, longer than the limit of "
            f"{options.max_duration:.0f} s: refused as an audio bomb."
        )
    if claimed * rate * channels > options.max_samples:
        raise Undecodable(
            f"The audio claims {claimed * rate * channels:.0f} samples, more than the limit of "
            f"{options.max_samples}: refused as an audio bomb."
        )


def _demuxed_seconds(path: Path) -> float | None:
    """How long the audio is by its packets' timestamps (a pass that reads, but decodes
    nothing: bounded by the file's size and the sandbox's deadline), for a file whose header
    declares no duration: the waveform's bucket size. None when the timestamps do not say."""
    import av

    first = end = None
    try:
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            for packet in container.demux(stream):
                if packet.pts is not None:
                    first = packet.pts if first is None else min(first, packet.pts)
                    end = max(end or 0, packet.pts + (packet.duration or 0))
            time_base = stream.time_base
    except av.FFmpegError:
        return None  # the decoding pass says what is wrong, and where
    if first is None or end is None or time_base is None:
        return None
    return float((end - first) * time_base)


def _no_opus_because(
    codec: str,
    lossless: bool,
    size: int,
    seconds: float | None,
    bit_rate: int,
    options: AudioOptions,
) -> str:
    """Why no Opus copy is made ("" when one is)."""
    if not lossless:
        return f"already compressed ({codec})"
    if size < options.opus_min_bytes:
        return f"smaller than {options.opus_min_bytes} bytes"
    if seconds is not None and seconds * bit_rate / 8 >= size:
        return f"an Opus copy at {bit_rate} bit/s would not be smaller"
    return ""


class _Opus:
    """An Ogg Opus file being written: 48 kHz, mono for mono audio, else stereo (downmixed)."""

    def __init__(self, path: Path, channels: int, bit_rate: int) -> None:
        import av

        self.container = av.open(str(path), "w", format="ogg")
        layout = "mono" if channels == 1 else "stereo"
        self.stream = self.container.add_stream("libopus", rate=OPUS_RATE, layout=layout)
        self.stream.bit_rate = bit_rate
        self.closed = False

    def write(self, frame: av.AudioFrame | None) -> None:
        if frame is not None:
            frame.pts = None  # the encoder counts its own samples
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def finish(self) -> None:
        self.write(None)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.container.close()


class _Levels:
    """FFmpeg's astats over buckets of samples: each channel's minimum and maximum per bucket,
    in 16-bit units. Built for the first frame's format; a later frame in another format (a
    stream that changes its rate or channels) is refused."""

    def __init__(self, first: av.AudioFrame, samples: int) -> None:
        import av.filter

        self.shape = _shape(first)
        self.channels = first.layout.nb_channels
        self.graph = av.filter.Graph()
        source = self.graph.add_abuffer(
            sample_rate=first.sample_rate,
            format=first.format.name,
            layout=first.layout.name,
            channels=self.channels,
            time_base=first.time_base,
        )
        chain = [
            source,
            self.graph.add("aformat", "sample_fmts=s16|s16p|s32|s32p|flt|fltp|dbl|dblp"),
            self.graph.add("asetnsamples", f"n={samples}:p=0"),
            self.graph.add(
                "astats",
                "metadata=1:reset=1:measure_perchannel=Min_level+Max_level:measure_overall=none",
            ),
            self.graph.add("abuffersink"),
        ]
        for here, there in itertools.pairwise(chain):
            here.link_to(there)
        self.graph.configure()

    def push(self, frame: av.AudioFrame | None) -> Iterator[list[int]]:
        if frame is not None and _shape(frame) != self.shape:
            raise Undecodable("The audio changes its sample rate, format or channels midway.")
        self.graph.push(frame)
        yield from self._pull()

    def _pull(self) -> Iterator[list[int]]:
        import av

        while True:
            try:
                out = self.graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                return
            metadata = out.metadata
            scale = _SCALES[out.format.name.removesuffix("p")]  # planar or not, the same
            levels = []
            for channel in range(1, self.channels + 1):
                for which in ("Min_level", "Max_level"):
                    raw = metadata[f"lavfi.astats.{channel}.{which}"]
                    levels.append(to_16_bits(float(raw), scale))
            yield levels


def _shape(frame: av.AudioFrame) -> tuple[int, str, str]:
    return frame.sample_rate, frame.format.name, frame.layout.name


def _decode(
    container: av.container.InputContainer,
    stream: av.audio.stream.AudioStream,
    peaks: Peaks,
    opus: _Opus | None,
    options: AudioOptions,
    deadline: float,
) -> int:
    """Decode every frame of ``stream`` into ``peaks`` (and ``opus``); the samples decoded."""
    import av

    rate, channels = stream.codec_context.sample_rate, stream.codec_context.channels
    most_samples = min(options.max_duration * rate, options.max_samples / channels)
    levels: _Levels | None = None
    decoded = 0
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets, None)
            if packet is None:
                break
            frames = packet.decode()
        except av.FFmpegError as exc:
            raise Undecodable(
                f"The audio is damaged at {decoded / rate:.3f} s: {ffmpeg_reason(exc)}."
            ) from exc
        for frame in frames:
            assert isinstance(frame, av.AudioFrame)
            decoded += frame.samples
            if decoded > most_samples:
                _over_limit(decoded, rate, options)
            if levels is None:
                levels = _Levels(frame, peaks.samples_per_bucket)
            for bucket in levels.push(frame):
                peaks.add(bucket)
            if opus is not None:
                opus.write(frame)
        if time.process_time() > deadline:
            raise Undecodable(
                f"Decoding the audio took more than {options.max_decode_seconds:g} s of CPU time "
                f"(at {decoded / rate:.3f} s of it)."
            )
    if levels is not None:
        for bucket in levels.push(None):
            peaks.add(bucket)
    if opus is not None and decoded:
        opus.finish()
    return decoded


def _over_limit(decoded: int, rate: int, options: AudioOptions) -> None:
    if decoded > options.max_duration * rate:
        raise Undecodable(
            f"The audio lasts longer than the limit of {options.max_duration:.0f} s: refused "
            "as an audio bomb."
        )
    raise Undecodable(
        f"The audio decodes to more than the limit of {options.max_samples} samples: refused "
        "as an audio bomb."
    )


def _bit_rate(
    stream: av.audio.stream.AudioStream,
    container: av.container.InputContainer,
    size: int,
    seconds: float,
) -> int:
    """The stream's declared bit rate, else the container's, else the file's average."""
    declared = stream.codec_context.bit_rate or container.bit_rate
    return int(declared) if declared else round(size * 8 / seconds)


def _tags(
    container: av.container.InputContainer, stream: av.audio.stream.AudioStream
) -> dict[str, str]:
    """Title, artist, album, date, comment and encoder, as FFmpeg names them in every format
    (ID3, MP4, Vorbis comments, RIFF INFO, Matroska tags), the container's before the
    stream's; blanks trimmed, capped."""
    found: dict[str, str] = {}
    for metadata in (container.metadata, stream.metadata):
        for key, value in metadata.items():
            name = key.lower()
            text = value.strip()[:MAX_TAG_CHARS]
            if name in TAGS and name not in found and text:
                found[name] = text
    return {name: found[name] for name in TAGS if name in found}


# -- durations as headers declare them -------------------------------------------------------------
def claimed_seconds(
    container: av.container.InputContainer, stream: av.audio.stream.AudioStream, path: Path
) -> float | None:
    """The duration the file's header declares, or None where there is none (or only FFmpeg's
    estimate from the bit rate: ADTS, AMR, an MP3 without a Xing, Info or VBRI frame, a
    live-written WebM or FLAC)."""
    name = container.format.name
    if name == "wav":
        return wav_claim(path)
    if name == "caf":
        return caf_claim(path)
    if name in _DECLARING or (name == "mp3" and mp3_has_length_frame(path)):
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        # The Segment's duration is its longest track's: the audio's only when it is alone.
        if name == "matroska,webm" and container.duration and len(container.streams) == 1:
            return container.duration / 1_000_000
    return None


_RIFF_UNKNOWN = (0, 0xFFFFFFFF)  # data sizes of WAVs written live (the length was never known)


def wav_claim(path: Path) -> float | None:
    """The duration a RIFF/RF64/BW64 WAV's header declares (its data chunk's size), or None. FFmpeg
    cuts a data chunk that claims more than the file holds to what it holds; this is what the
    header said."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RF64", b"BW64"):
            return None
        ds64_size, rate, block = None, 0, 0
        for _ in range(64):  # chunks before the data: fmt, bext, iXML, LIST, ds64, ...
            header = f.read(8)
            if len(header) < 8:
                return None
            kind, size = header[:4], struct.unpack("<I", header[4:])[0]
            if kind == b"data":
                if head[:4] != b"RIFF" and size == 0xFFFFFFFF:  # RF64: the size is in ds64
                    if ds64_size is None:
                        return None
                    size = ds64_size
                elif size in _RIFF_UNKNOWN:
                    return None
                return size // block / rate if rate and block else None
            body = f.read(min(size, 64)) if kind in (b"fmt ", b"ds64") else b""
            if kind == b"fmt " and len(body) >= 14:
                rate, block = struct.unpack("<I", body[4:8])[0], struct.unpack("<H", body[12:14])[0]
            if kind == b"ds64" and len(body) >= 16:
                ds64_size = struct.unpack("<Q", body[8:16])[0]
            f.seek(size + (size & 1) - len(body), 1)
    return None


def caf_claim(path: Path) -> float | None:
    """The duration a CAF's header declares: its ``pakt`` chunk's valid frames (compressed
    audio; the chunk may follow the data), else its ``data`` chunk's size in packets of
    ``desc``'s size (PCM); None for a data chunk of unknown size (-1: written live) and for a
    ``pakt`` whose count of valid frames is negative (the field is signed: below zero, no count)."""
    rate, packet_bytes, packet_frames = 0.0, 0, 0
    valid_frames: int | None = None
    data_size: int | None = None
    end = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(4) != b"caff":
            return None
        # Each chunk is read at its offset, never sought past the file's end: a chunk's size may
        # claim more than a file system can address (a seek there fails with EINVAL).
        at = 8
        for _ in range(64):
            if at + 12 > end:
                break
            f.seek(at)
            header = f.read(12)
            kind, size = header[:4], int.from_bytes(header[4:], "big", signed=True)
            if size < 0:
                return None  # a data chunk that runs to the end of the file
            body = f.read(min(size, 32))
            if kind == b"desc" and len(body) >= 32:
                rate = float(struct.unpack(">d", body[:8])[0])
                packet_bytes = int.from_bytes(body[16:20], "big")
                packet_frames = int.from_bytes(body[20:24], "big")
            elif kind == b"pakt" and len(body) >= 16:
                valid_frames = int.from_bytes(body[8:16], "big", signed=True)
            elif kind == b"data":
                data_size = size
            at += 12 + size
    if not rate:
        return None
    if valid_frames is not None:
        return valid_frames / rate if valid_frames >= 0 else None
    if data_size is None or data_size < 4 or not (packet_bytes and packet_frames):
        return None
    return (data_size - 4) // packet_bytes * packet_frames / rate


def ogg_cut(path: Path) -> bool:
    """Whether an Ogg file ends inside a page (FFmpeg drops such a page without a word: an Ogg
    declares no length but its last page's, wherever the file ends)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        at = 0
        while at < size:
            f.seek(at)
            header = f.read(27)
            if len(header) < 27 or header[:4] != b"OggS":
                return True
            lacing = f.read(header[26])
            if len(lacing) < header[26]:
                return True
            at += 27 + header[26] + sum(lacing)
        return at > size


def mp3_has_length_frame(path: Path) -> bool:
    """Whether an MP3's first frame is a Xing, Info or VBRI frame (it counts the frames: FFmpeg's
    duration is then the encoder's, not an estimate)."""
    with open(path, "rb") as f:
        head = f.read(10)
        start = 0
        if head.startswith(b"ID3") and len(head) == 10:
            start = 10 + (head[6] << 21 | head[7] << 14 | head[8] << 7 | head[9])
            start += 10 if head[5] & 0x10 else 0
        f.seek(start)
        frame = f.read(192)
    return any(tag in frame for tag in (b"Xing", b"Info", b"VBRI"))
