"""Audio by its first bytes, and what a container that may hold video holds (sans-I/O).

Audio-only formats are recognised by their signatures, checked a little further than a magic
number where the magic is short: WAV (``RIFF``/``RIFX``/``RF64``/``BW64`` ... ``WAVE``; BWF is a
WAV with a ``bext`` chunk), AIFF/AIFC, CAF, FLAC, AMR (narrow and wide band), MP3 (an ID3v2 tag
skipped, then an MPEG Layer III frame header whose fields are valid and, when the window holds
it, a second one where the first frame ends) and AAC in ADTS frames (checked the same way).

Containers that hold audio or video (MP4/3GP, WebM/Matroska, Ogg) say which from their first
bytes when their track list comes first:
- ISO BMFF: ``moov`` before ``mdat`` (a "fast start" file); every ``trak``'s ``mdia/hdlr``
  handler is read: ``vide`` is video, ``soun`` without ``vide`` is audio.
- EBML: the ``Tracks`` element of the ``Segment`` before its first ``Cluster``; a ``TrackType``
  of 1 is video, 2 without 1 is audio. Browsers' MediaRecorder writes it first.
- Ogg: every stream's first page comes before any other page (RFC 3533), and its first packet
  names its codec: Opus, Vorbis, FLAC and Speex are audio; Theora, Daala, Dirac, VP8 and OGM
  video are video.
``container_holds`` says ``"audio"``, ``"video"``, or ``None`` when the window ends first (an MP4
written without fast start has its ``moov`` at the end), or a track list says neither. The
worker decodes every such file anyway and settles the type there (gateway/processing/derive.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

Holds = Literal["audio", "video"]

# Audio types as the gateway names them (what it stores and serves), and their extensions.
WAV, AIFF, CAF, FLAC = "audio/wav", "audio/aiff", "audio/x-caf", "audio/flac"
AMR, AMR_WB, MP3, AAC = "audio/amr", "audio/amr-wb", "audio/mpeg", "audio/aac"
MP4_AUDIO, OGG_AUDIO, WEBM_AUDIO, MKA = "audio/mp4", "audio/ogg", "audio/webm", "audio/x-matroska"
EXTENSIONS = {
    WAV: ".wav",
    AIFF: ".aiff",
    CAF: ".caf",
    FLAC: ".flac",
    AMR: ".amr",
    AMR_WB: ".awb",
    MP3: ".mp3",
    AAC: ".aac",
    MP4_AUDIO: ".m4a",
    OGG_AUDIO: ".ogg",
    MKA: ".mka",
    "audio/3gpp": ".3gp",
}
# Other names clients (browsers' File.type, older tools) give the same types.
ALIASES = {
    "audio/x-wav": WAV,
    "audio/wave": WAV,
    "audio/vnd.wave": WAV,
    "audio/x-pn-wav": WAV,
    "audio/x-aiff": AIFF,
    "audio/x-flac": FLAC,
    "audio/mp3": MP3,
    "audio/x-mp3": MP3,
    "audio/mpeg3": MP3,
    "audio/x-mpeg": MP3,
    "audio/x-aac": AAC,
    "audio/aacp": AAC,
    "audio/x-m4a": MP4_AUDIO,
    "audio/m4a": MP4_AUDIO,
    "audio/opus": OGG_AUDIO,
    "audio/vorbis": OGG_AUDIO,
}
# A container's video type and its audio-only twin (with their extensions): the same bytes,
# typed by what they hold.
_PAIRS = (
    ("video/mp4", ".mp4", MP4_AUDIO, ".m4a"),
    ("video/3gpp", ".3gp", "audio/3gpp", ".3gp"),
    ("video/webm", ".webm", WEBM_AUDIO, ".webm"),
    ("video/x-matroska", ".mkv", MKA, ".mka"),
    ("video/ogg", ".ogv", OGG_AUDIO, ".ogg"),
)
TWIN_TYPES = {video: (video_ext, audio, audio_ext) for video, video_ext, audio, audio_ext in _PAIRS}
TWIN_TYPES.update(
    {audio: (audio_ext, video, video_ext) for video, video_ext, audio, audio_ext in _PAIRS}
)
# What a key's extension says, where it says one thing (.webm and .3gp may be either).
BY_EXTENSION = {extension: mime for mime, extension in EXTENSIONS.items() if mime != "audio/3gpp"}
BY_EXTENSION.update(
    {".opus": OGG_AUDIO, ".oga": OGG_AUDIO, ".ogv": "video/ogg", ".mkv": "video/x-matroska"}
)


def twin(mime: str) -> str:
    """The same container's other type (``video/webm`` <-> ``audio/webm``), or ""."""
    return TWIN_TYPES[mime][1] if mime in TWIN_TYPES else ""


def extension_of(mime: str) -> str:
    """The extension of an audio type or of a container's video type, or ""."""
    if mime in TWIN_TYPES:
        return TWIN_TYPES[mime][0]
    return EXTENSIONS.get(mime, "")


def canonical(mime: str) -> str:
    return ALIASES.get(mime, mime)


# -- audio-only formats ----------------------------------------------------------------------------
def audio_signature(head: bytes) -> tuple[str, str] | None:
    """(type, extension) of an audio-only format, or None."""
    four = head[:4]
    if four in (b"RIFF", b"RIFX", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return WAV, ".wav"
    if four == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return AIFF, ".aiff"
    if head.startswith(b"caff\x00\x01"):
        return CAF, ".caf"
    if four == b"fLaC":
        return FLAC, ".flac"
    if head.startswith(b"#!AMR\n"):
        return AMR, ".amr"
    if head.startswith(b"#!AMR-WB\n"):
        return AMR_WB, ".awb"
    return _mpeg_or_adts(head)


def _mpeg_or_adts(head: bytes) -> tuple[str, str] | None:
    start = 0
    if head.startswith(b"ID3") and len(head) >= 10:
        size = _syncsafe(head[6:10])
        if size is None:
            return None
        start = 10 + size + (10 if head[5] & 0x10 else 0)
        if start + 4 > len(head):
            return MP3, ".mp3"  # a tag longer than the window: what follows it is out of sight
        if head[start : start + 4] == b"fLaC":
            return FLAC, ".flac"
    if _frames(head, start, _mp3_frame_length, 4):
        return MP3, ".mp3"
    if _frames(head, start, _adts_frame_length, 7):
        return AAC, ".aac"
    return None


def _syncsafe(raw: bytes) -> int | None:
    if any(byte & 0x80 for byte in raw):
        return None
    return raw[0] << 21 | raw[1] << 14 | raw[2] << 7 | raw[3]


_FrameLength = Callable[[bytes], int | None]


def _frames(head: bytes, start: int, frame_length: _FrameLength, header: int) -> bool:
    """A valid frame header (``header`` bytes) at ``start`` and, if the window reaches it,
    another where that frame ends."""
    first = frame_length(head[start : start + header])
    if first is None:
        return False
    following = start + first
    if following + header > len(head):
        return True
    return frame_length(head[following : following + header]) is not None


_MP3_KBPS = {
    3: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),  # MPEG-1
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),  # MPEG-2
}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _mp3_frame_length(header: bytes) -> int | None:
    """The length of the MPEG Layer III frame this header starts, or None if it is none."""
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return None
    version, layer = header[1] >> 3 & 3, header[1] >> 1 & 3
    bitrate_index, rate_index = header[2] >> 4, header[2] >> 2 & 3
    if version == 1 or layer != 1 or bitrate_index in (0, 15) or rate_index == 3:
        return None  # reserved version, not Layer III, free or bad bit rate, reserved rate
    kbps = _MP3_KBPS[3 if version == 3 else 2][bitrate_index]
    rate = _MP3_RATES[version][rate_index]
    padding = header[2] >> 1 & 1
    return (144 if version == 3 else 72) * kbps * 1000 // rate + padding


def _adts_frame_length(header: bytes) -> int | None:
    """The length of the ADTS frame this header starts, or None if it is none."""
    if len(header) < 7 or header[0] != 0xFF or header[1] & 0xF6 != 0xF0:
        return None  # no sync word, or a layer other than 0
    if header[2] >> 2 & 0xF > 12:
        return None  # a reserved sampling frequency index
    length = (header[3] & 3) << 11 | header[4] << 3 | header[5] >> 5
    return length if length >= 7 else None


# -- containers: what they hold --------------------------------------------------------------------
class _OutOfSight(Exception):
    """The window ends before the answer."""


def _big(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def container_holds(head: bytes) -> Holds | None:
    """Whether an MP4/3GP, WebM/Matroska or Ogg file holds video, audio only, or (None) the
    first bytes cannot tell."""
    try:
        if head[4:8] == b"ftyp":
            return _iso_holds(head)
        if head.startswith(b"\x1a\x45\xdf\xa3"):
            return _ebml_holds(head)
        if head.startswith(b"OggS"):
            return _decide(_ogg_kinds(head))
    except _OutOfSight:
        return None
    return None


def _decide(kinds: Iterator[str | None]) -> Holds | None:
    """From the kinds of a file's media tracks ("audio", "video", None: unknown; tracks that
    are no media, such as subtitles, are not listed)."""
    seen = set(kinds)
    if "video" in seen:
        return "video"
    if None in seen:
        return None  # a stream of a kind we do not know could be video
    return "audio" if "audio" in seen else None


# ISO BMFF (MP4, M4A, 3GP, QuickTime): boxes of (32-bit size, type), size 1: a 64-bit size follows.
def _boxes(head: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of each box in [start, end)."""
    at = start
    while at < end:
        if at + 8 > len(head):
            raise _OutOfSight
        size, kind, payload = (
            _big(head[at : at + 4]),
            head[at + 4 : at + 8],
            at + 8,
        )
        if size == 1:
            if at + 16 > len(head):
                raise _OutOfSight
            size, payload = _big(head[at + 8 : at + 16]), at + 16
        elif size == 0:
            size = end - at  # to the end of its parent (the file)
        if size < payload - at:
            return  # a malformed size: nothing more can be read here
        yield kind, payload, at + size
        at += size


_OPEN_END = 1 << 62


def _iso_holds(head: bytes) -> Holds | None:
    for kind, payload, end in _boxes(head, 0, _OPEN_END):
        if kind == b"mdat":
            return None  # the media before the track list: it is at the end
        if kind == b"moov":
            return _decide(_handler_kinds(head, payload, end))
    return None


_HANDLERS = {b"vide": "video", b"soun": "audio"}


def _handler_kinds(head: bytes, start: int, end: int) -> Iterator[str | None]:
    for kind, payload, trak_end in _boxes(head, start, end):
        if kind != b"trak":
            continue
        handler = _path(head, payload, trak_end, (b"mdia", b"hdlr"))
        if handler is None:
            yield None
            continue
        if handler + 12 > len(head):
            raise _OutOfSight
        code = head[handler + 8 : handler + 12]  # after version, flags and pre_defined
        if code in _HANDLERS:
            yield _HANDLERS[code]  # other handlers (text, hint, meta, ...) are no media


def _path(head: bytes, start: int, end: int, names: tuple[bytes, ...]) -> int | None:
    """The payload start of the box at ``names`` (a path of box types) inside [start, end)."""
    for kind, payload, box_end in _boxes(head, start, end):
        if kind == names[0]:
            if len(names) == 1:
                return payload
            return _path(head, payload, box_end, names[1:])
    return None


# EBML (Matroska, WebM): elements of (ID, size) as variable-length integers.
_SEGMENT, _TRACKS, _TRACK_ENTRY, _TRACK_TYPE, _CLUSTER = (
    0x18538067,
    0x1654AE6B,
    0xAE,
    0x83,
    0x1F43B675,
)
_TRACK_TYPES = {1: "video", 2: "audio"}


@dataclass(frozen=True)
class _Element:
    id: int
    payload: int
    end: int  # an unknown size (all ones: a live stream's Segment or Cluster) reads as huge


class _Malformed(Exception):
    """Bytes that are no EBML element."""


def _vint(head: bytes, at: int) -> tuple[int, int]:
    """(the bytes, length) of the variable-length integer at ``at``: its length is the
    position of the first set bit of its first byte (a 0 byte begins none)."""
    if at >= len(head):
        raise _OutOfSight
    if not head[at]:
        raise _Malformed
    length = 9 - head[at].bit_length()
    if at + length > len(head):
        raise _OutOfSight
    return _big(head[at : at + length]), length


def _element(head: bytes, at: int) -> _Element:
    """An element: its ID keeps its length marker, its size drops it."""
    ident, id_length = _vint(head, at)
    size, size_length = _vint(head, at + id_length)
    payload = at + id_length + size_length
    return _Element(ident, payload, payload + (size & ((1 << 7 * size_length) - 1)))


def _ebml_holds(head: bytes) -> Holds | None:
    try:
        segment = _element(head, _element(head, 0).end)  # after the EBML header
        if segment.id != _SEGMENT:
            return None
        at = segment.payload
        while at < segment.end:
            child = _element(head, at)
            if child.id == _TRACKS:
                return _decide(_track_kinds(head, child))
            if child.id == _CLUSTER:
                return None  # media before the track list
            at = child.end
    except _Malformed:
        return None
    return None


def _track_kinds(head: bytes, tracks: _Element) -> Iterator[str | None]:
    at = tracks.payload
    while at < tracks.end:
        entry = _element(head, at)
        if entry.id == _TRACK_ENTRY:
            number = _track_type(head, entry)
            if number is None:
                yield None
            elif number in _TRACK_TYPES:
                yield _TRACK_TYPES[number]  # subtitles, buttons, ... are no media
        at = entry.end


def _track_type(head: bytes, entry: _Element) -> int | None:
    """A TrackEntry's TrackType, or None when it has none."""
    at = entry.payload
    while at < entry.end:
        field = _element(head, at)
        if field.id == _TRACK_TYPE:
            if field.end > len(head):
                raise _OutOfSight
            return _big(head[field.payload : field.end])
        at = field.end
    return None


# Ogg: pages; the first page of each logical stream (flag 0x02) begins with its codec's header.
_OGG_AUDIO = (b"OpusHead", b"\x01vorbis", b"\x7fFLAC", b"Speex   ")
_OGG_VIDEO = (b"\x80theora", b"\x80daala", b"BBCD\x00", b"OVP80", b"\x01video\x00")
_OGG_NO_MEDIA = (b"fishead\x00", b"\x80kate")  # a skeleton (an index), Kate (subtitles)


def _ogg_first_packets(head: bytes) -> Iterator[bytes]:
    """The first 8 bytes of each logical stream's first packet, from the first pages; b"" for
    bytes that are no page."""
    at = 0
    while True:
        if at + 27 > len(head):
            raise _OutOfSight
        if head[at : at + 4] != b"OggS":
            yield b""
            return
        if not head[at + 5] & 0x02:
            return  # the first page that begins no stream: every stream has begun
        payload = at + 27 + head[at + 26]  # after the segment table
        if payload + 8 > len(head):
            raise _OutOfSight
        yield head[payload : payload + 8]
        at = payload + sum(head[at + 27 : payload])


def _ogg_kinds(head: bytes) -> Iterator[str | None]:
    for packet in _ogg_first_packets(head):
        if packet.startswith(_OGG_AUDIO):
            yield "audio"
        elif packet.startswith(_OGG_VIDEO):
            yield "video"
        elif not packet.startswith(_OGG_NO_MEDIA):
            yield None


def ogg_extension(head: bytes) -> str:
    """``.opus`` for Ogg Opus, ``.ogg`` for Vorbis, ``.oga`` for other audio in Ogg (RFC 5334,
    RFC 7845); ``.ogg`` when the first bytes cannot tell."""
    try:
        audio = [p for p in _ogg_first_packets(head) if p.startswith(_OGG_AUDIO)]
    except _OutOfSight:
        return ".ogg"
    if audio and all(p.startswith(b"OpusHead") for p in audio):
        return ".opus"
    if not audio or any(p.startswith(b"\x01vorbis") for p in audio):
        return ".ogg"
    return ".oga"
