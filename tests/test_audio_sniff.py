"""Audio by its first bytes (gateway/uploads/sniff_audio.py): audio-only signatures, and what an
MP4, WebM/Matroska or Ogg holds, on hand-built bytes and on real files made by PyAV."""

from __future__ import annotations

import struct

import media_samples as samples
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import errors
from gateway.uploads.ingest import checked_type
from gateway.uploads.sniff import SniffedType, mime_of_extension, sniff, type_of_mime
from gateway.uploads.sniff_audio import (
    audio_signature,
    canonical,
    container_holds,
    extension_of,
    ogg_extension,
    twin,
)


# -- builders ----------------------------------------------------------------------------------------
def box(kind: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def trak(handler: bytes | None) -> bytes:
    hdlr = box(b"hdlr", b"\0" * 8 + handler + b"\0" * 12 + b"name\0") if handler else b""
    return box(b"trak", box(b"tkhd", b"\0" * 84) + box(b"mdia", box(b"mdhd", b"\0" * 24) + hdlr))


def mp4(*handlers: bytes | None, brand=b"isom", moov_first=True, mdat=b"\0" * 64) -> bytes:
    ftyp = box(b"ftyp", brand + b"\0\0\2\0" + b"isomiso2mp41")
    moov = box(b"moov", box(b"mvhd", b"\0" * 100) + b"".join(trak(h) for h in handlers))
    media = box(b"mdat", mdat)
    return ftyp + (moov + media if moov_first else media + moov)


def vint_size(size: int) -> bytes:
    return bytes([0x80 | size]) if size < 127 else b"\x01" + size.to_bytes(7, "big")


def element(ident: int, payload: bytes) -> bytes:
    return ident.to_bytes((ident.bit_length() + 7) // 8, "big") + vint_size(len(payload)) + payload


UNKNOWN_SIZE = b"\x01\xff\xff\xff\xff\xff\xff\xff"


def track(kind: int | None, codec: bytes = b"A_OPUS") -> bytes:
    kind_field = element(0x83, bytes([kind])) if kind is not None else b""
    return element(0xAE, element(0xD7, b"\x01") + kind_field + element(0x86, codec))


def ebml(*tracks: bytes, doctype=b"webm", before=b"", tracks_size=None) -> bytes:
    header = element(0x1A45DFA3, element(0x4282, doctype) + element(0x4287, b"\x04"))
    body = b"".join(tracks)
    listed = (
        element(0x1654AE6B, body)
        if tracks_size is None
        else b"\x16\x54\xae\x6b" + vint_size(tracks_size) + body
    )
    info = element(0x1549A966, element(0x2AD7B1, b"\x0f\x42\x40"))
    return (
        header + b"\x18\x53\x80\x67" + UNKNOWN_SIZE + info + before + listed + b"\x1f\x43\xb6\x75"
    )


def ogg_page(payload: bytes, *, first: bool) -> bytes:
    lacing = [255] * (len(payload) // 255) + [len(payload) % 255]
    header = b"OggS\0" + bytes([0x02 if first else 0]) + b"\0" * 8 + b"\1\0\0\0" * 2 + b"\0" * 4
    return header + bytes([len(lacing), *lacing]) + payload


def ogg(*codec_headers: bytes, then=True) -> bytes:
    pages = b"".join(ogg_page(h + b"\0" * 30, first=True) for h in codec_headers)
    return pages + (ogg_page(b"data", first=False) if then else b"")


OPUS, VORBIS, FLAC_OGG, THEORA = b"OpusHead", b"\x01vorbis", b"\x7fFLAC", b"\x80theora"


def mp3_frame(*, version=3, layer=1, bitrate=9, rate=0, padding=0, crc=False) -> bytes:
    """An MPEG audio frame: MPEG-1 Layer III 128 kb/s 44.1 kHz by default."""
    header = bytes(
        [
            0xFF,
            0xE0 | version << 3 | layer << 1 | (0 if crc else 1),
            bitrate << 4 | rate << 2 | padding << 1,
            0x44,
        ]
    )
    kbps = {3: [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320]}.get(
        version, [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160]
    )[bitrate % 15]
    hz = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}.get(
        version, (44100, 48000, 32000)
    )[rate % 3]
    length = (144 if version == 3 else 72) * kbps * 1000 // hz + padding if kbps else 4
    return header + b"\0" * (length - 4)


def adts_frame(*, length=64, rate_index=3) -> bytes:
    header = bytes(
        [
            0xFF,
            0xF1,
            0x40 | rate_index << 2,
            0x80 | (length >> 11) & 3,
            (length >> 3) & 0xFF,
            (length & 7) << 5 | 0x1F,
            0xFC,
        ]
    )
    return header + b"\0" * max(0, length - 7)


def id3(size: int, *, footer=False) -> bytes:
    safe = bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
    tag = b"ID3\x04\x00" + bytes([0x10 if footer else 0]) + safe + b"\0" * size
    return tag + (b"3DI\x04\x00\x10" + safe if footer else b"")


# -- audio-only signatures ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "head, expected",
    [
        (b"RIFF\0\0\0\0WAVEfmt ", ("audio/wav", ".wav")),
        (b"RIFX\0\0\0\0WAVEfmt ", ("audio/wav", ".wav")),
        (b"RF64\xff\xff\xff\xffWAVEds64", ("audio/wav", ".wav")),
        (b"BW64\xff\xff\xff\xffWAVEds64", ("audio/wav", ".wav")),
        (b"RIFF\0\0\0\0AVI LIST", None),
        (b"RIFX\0\0\0\0WAV", None),
        (b"FORM\0\0\0\0AIFFCOMM", ("audio/aiff", ".aiff")),
        (b"FORM\0\0\0\0AIFCFVER", ("audio/aiff", ".aiff")),
        (b"FORM\0\0\0\0ILBM", None),
        (b"caff\x00\x01\x00\x00desc", ("audio/x-caf", ".caf")),
        (b"caff\x00\x02\x00\x00desc", None),
        (b"fLaC\0\0\0\x22", ("audio/flac", ".flac")),
        (b"#!AMR\n<", ("audio/amr", ".amr")),
        (b"#!AMR-WB\n<", ("audio/amr-wb", ".awb")),
        (b"#!AMR-W", None),
        (b"", None),
    ],
)
def test_audio_only_formats_by_signature(head, expected):
    assert audio_signature(head) == expected


@pytest.mark.parametrize(
    "head, expected",
    [
        (mp3_frame() + mp3_frame(), ("audio/mpeg", ".mp3")),
        (mp3_frame(crc=True) + mp3_frame(crc=True), ("audio/mpeg", ".mp3")),  # 0xFFFA
        (mp3_frame(version=2, rate=1) + mp3_frame(version=2, rate=1), ("audio/mpeg", ".mp3")),
        (mp3_frame(version=0, rate=2) + mp3_frame(version=0, rate=2), ("audio/mpeg", ".mp3")),
        (mp3_frame(padding=1) + mp3_frame(), ("audio/mpeg", ".mp3")),
        (mp3_frame()[:40], ("audio/mpeg", ".mp3")),  # the second frame out of sight
        (mp3_frame() + b"\0" * 10, None),  # no second frame where the first ends
        (mp3_frame() + mp3_frame(bitrate=15), None),
        (mp3_frame(version=1) * 2, None),  # a reserved version
        (mp3_frame(layer=2) * 2, None),  # Layer II
        (mp3_frame(layer=0) * 2, None),
        (mp3_frame(bitrate=0) * 2, None),  # free format
        (mp3_frame(bitrate=15) * 2, None),
        (mp3_frame(rate=3) * 2, None),
        (id3(20) + mp3_frame() * 2, ("audio/mpeg", ".mp3")),
        (id3(20, footer=True) + mp3_frame() * 2, ("audio/mpeg", ".mp3")),
        (id3(20) + b"\0" * 10 + mp3_frame() * 2, None),  # nothing where the tag ends
        (id3(9000)[:8192], ("audio/mpeg", ".mp3")),  # a tag longer than the window
        (id3(20) + b"fLaC\0\0\0\x22", ("audio/flac", ".flac")),
        (b"ID3\x04\x00\x00\x80\x00\x00\x00" + mp3_frame() * 2, None),  # not syncsafe
        (b"ID3\x04\x00\x00\x00", None),  # a cut header
        (adts_frame() + adts_frame(), ("audio/aac", ".aac")),
        (adts_frame(length=300)[:200], ("audio/aac", ".aac")),
        (adts_frame() + b"\0" * 8, None),
        (adts_frame(rate_index=13) * 2, None),
        (adts_frame(rate_index=12) * 2, ("audio/aac", ".aac")),
        (adts_frame(length=6)[:7] * 2, None),
        (id3(10) + adts_frame() * 2, ("audio/aac", ".aac")),
        (b"\xff\xfb\x90", None),  # shorter than a header
        # a window that ends exactly with the second header checks it; one byte less cannot
        (mp3_frame() + b"\0" * 4, None),
        (mp3_frame() + b"\0" * 3, ("audio/mpeg", ".mp3")),
        (adts_frame() + b"\0" * 7, None),
        (adts_frame() + b"\0" * 6, ("audio/aac", ".aac")),
        # the same for what follows a tag: FLAC's magic ending with the window is read
        (id3(20) + b"fLaC", ("audio/flac", ".flac")),
        (id3(20) + b"fLa", ("audio/mpeg", ".mp3")),
        (id3(0), ("audio/mpeg", ".mp3")),  # a whole tag header, then nothing in sight
    ],
)
def test_mp3_and_adts_frames_are_checked_past_their_sync_word(head, expected):
    assert audio_signature(head) == expected


MP3_KBPS = {
    3: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    0: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
MP3_HZ = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


@pytest.mark.parametrize("version", [3, 2, 0], ids=["mpeg1", "mpeg2", "mpeg2.5"])
@pytest.mark.parametrize("rate", [0, 1, 2])
@pytest.mark.parametrize("bitrate", range(1, 15))
def test_every_layer_iii_bit_rate_and_sample_rate_gives_its_frame_length(version, rate, bitrate):
    """ISO/IEC 11172-3 and 13818-3's tables: the second frame is found exactly where the
    first one ends, and nowhere else."""
    length = (
        (144 if version == 3 else 72) * MP3_KBPS[version][bitrate] * 1000 // MP3_HZ[version][rate]
    )
    header = mp3_frame(version=version, rate=rate, bitrate=bitrate)[:4]
    frame = header + b"\0" * (length - 4)
    assert audio_signature(frame + header) == ("audio/mpeg", ".mp3")
    assert audio_signature(frame + b"\0" + header) is None
    assert audio_signature(frame[:-1] + header + b"\0") is None


@pytest.mark.parametrize("rate_index", range(16))
def test_adts_sampling_indexes_above_12_are_reserved(rate_index):
    head = adts_frame(rate_index=rate_index) * 2
    assert audio_signature(head) == (("audio/aac", ".aac") if rate_index <= 12 else None)


@pytest.mark.parametrize("length, valid", [(6, False), (7, True), (8, True), (8191, True)])
def test_an_adts_frame_holds_at_least_its_header(length, valid):
    head = adts_frame(length=length)[:7]
    head = head + b"\0" * (length - 7) + head if valid else head + head
    assert (audio_signature(head) is not None) is valid


@pytest.mark.parametrize("size", [1 << 7, 1 << 14, (1 << 21) + (1 << 14) + (1 << 7) + 1])
def test_an_id3_tag_of_any_size_is_skipped_to_the_frames_after_it(size):
    """Its size is four 7-bit bytes (syncsafe): each must count with its own weight."""
    assert audio_signature(id3(size) + mp3_frame() * 2) == ("audio/mpeg", ".mp3")
    assert audio_signature(id3(size) + b"\0" + mp3_frame() * 2) is None


# -- containers --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "head, holds",
    [
        (mp4(b"soun"), "audio"),
        (mp4(b"soun", b"soun"), "audio"),
        (mp4(b"vide"), "video"),
        (mp4(b"soun", b"vide"), "video"),
        (mp4(b"vide", b"soun"), "video"),
        (mp4(b"soun", b"text"), "audio"),  # chapters or captions: no video
        (mp4(b"text"), None),  # neither
        (mp4(None), None),  # a track without a handler
        (mp4(None, b"vide"), "video"),  # what it cannot tell, a video track after it can
        # a handler box with nothing after its code, the window's end right there
        (
            box(b"ftyp", b"isom")
            + box(b"moov", box(b"trak", box(b"mdia", box(b"hdlr", b"\0" * 8 + b"soun")))),
            "audio",
        ),
        (
            box(b"ftyp", b"isom")
            + box(b"moov", box(b"trak", box(b"mdia", box(b"hdlr", b"\0" * 8 + b"sou")))),
            None,
        ),
        (  # the window ends inside the second track's code: it may be video
            box(b"ftyp", b"isom")
            + box(
                b"moov",
                trak(b"soun") + box(b"trak", box(b"mdia", box(b"hdlr", b"\0" * 8 + b"vid"))),
            ),
            None,
        ),
        # boxes follow one another: a box's size is no position
        (
            box(b"ftyp", b"isom" + b"\0" * 100)
            + box(b"moov", box(b"mvhd", b"\0" * 20) + trak(b"vide")),
            "video",
        ),
        (mp4(), None),  # no track
        (mp4(b"soun", moov_first=False), None),  # the track list at the end
        (mp4(b"soun")[:60], None),  # the window ends inside it
        (mp4(b"soun", b"vide")[:300], None),  # the second track out of sight
        (box(b"ftyp", b"isom") + b"\0\0\0\x01moov" + (16 + 8).to_bytes(8, "big") + b"\0" * 8, None),
        (box(b"ftyp", b"isom") + b"\0\0\0\x04free", None),  # a size smaller than its header
        (
            box(b"ftyp", b"isom")
            + b"\0\0\0\x01moov"
            + (16 + len(trak(b"soun"))).to_bytes(8, "big")
            + trak(b"soun"),
            "audio",
        ),  # a 64-bit size
        # to the end of the file, which the window may not reach
        (box(b"ftyp", b"isom") + b"\0\0\0\x00moov" + trak(b"vide"), None),
        (box(b"ftyp", b"isom") + b"\0\0\0\x01moo", None),
    ],
)
def test_an_mp4_holds_what_its_track_handlers_say(head, holds):
    assert container_holds(head) == holds


def _moov_ending_the_window(*boxes: bytes) -> bytes:
    """An MP4 whose track list is the last thing in the window (no mdat after it)."""
    ftyp = box(b"ftyp", b"isom\0\0\2\0isomiso2mp41")
    return ftyp + box(b"moov", box(b"mvhd", b"\0" * 100) + b"".join(boxes))


EMPTY_64 = struct.pack(">I", 1) + b"free" + struct.pack(">Q", 16)  # a 64-bit size, no payload


@pytest.mark.parametrize(
    "head, holds",
    [
        # a box header that ends exactly with the window is read
        (_moov_ending_the_window(trak(b"soun"), box(b"free")), "audio"),
        (_moov_ending_the_window(trak(b"soun"), box(b"free"))[:-1], None),
        (_moov_ending_the_window(trak(b"soun"), EMPTY_64), "audio"),
        (_moov_ending_the_window(trak(b"soun"), EMPTY_64)[:-1], None),
        # an empty box is a box: the tracks after it count
        (_moov_ending_the_window(trak(b"soun"), box(b"free"), trak(b"vide")), "video"),
    ],
)
def test_an_mp4s_boxes_are_read_to_the_windows_last_byte(head, holds):
    assert container_holds(head) == holds


@pytest.mark.parametrize("cut, holds", [(0, "audio"), (1, None)])
def test_an_ogg_page_header_ending_with_the_window_is_read(cut, holds):
    """After the streams' first pages, the next page's 27-byte header says none begins there."""
    head = ogg(OPUS, then=False) + ogg_page(b"data", first=False)[:27]
    assert container_holds(head[: len(head) - cut]) == holds


@pytest.mark.parametrize(
    "head, holds",
    [
        (ebml(track(2)), "audio"),
        (ebml(track(2), track(2)), "audio"),
        (ebml(track(1, b"V_VP8")), "video"),
        (ebml(track(2), track(1, b"V_VP8")), "video"),
        (ebml(track(2), track(17, b"S_TEXT/UTF8")), "audio"),
        (ebml(track(17, b"S_TEXT/UTF8")), None),
        (ebml(track(None)), None),
        (ebml(track(2), before=element(0xEC, b"\0" * 40)), "audio"),  # a Void first
        (ebml(track(2), before=b"\x1f\x43\xb6\x75" + UNKNOWN_SIZE), None),  # a Cluster first
        (ebml(track(2), before=b"\xec" + UNKNOWN_SIZE), None),  # cannot be skipped
        (ebml(track(2))[:60], "audio"),  # inside the only track, after its type
        (ebml(track(2), track(1))[:66], None),  # the second track's type out of sight
        (ebml(track(2), track(1), tracks_size=200), None),  # Tracks longer than the window
        (ebml(track(2))[:4], None),
        (b"\x1a\x45\xdf\xa3\x00", None),  # not an EBML size
        (b"\x1a\x45\xdf\xa3" + UNKNOWN_SIZE, None),  # a header of unknown size
        (element(0x1A45DFA3, b"") + element(0x1F43B675, b""), None),  # no Segment
        # Tracks after the Segment's end count for nothing
        (
            element(0x1A45DFA3, element(0x4282, b"webm"))
            + element(0x18538067, element(0x1549A966, b"\x2a\xd7\xb1\x81\x01"))
            + element(0x1654AE6B, track(2)),
            None,
        ),
        # a track without a type: a TrackType outside any track says nothing of it
        (ebml(track(None) + element(0x83, b"\x01")), None),
    ],
)
def test_a_webm_holds_what_its_track_types_say(head, holds):
    assert container_holds(head) == holds


def test_a_webm_whose_window_ends_right_after_the_track_type_is_decided():
    head = ebml(track(2))
    end = head.index(b"\x83\x81\x02") + 3
    assert container_holds(head[:end]) == "audio"
    assert container_holds(head[: end - 1]) is None


def test_a_window_that_ends_with_the_track_list_decides():
    """The last element read ends exactly where the window does: it is in sight."""
    head = ebml(track(1), element(0xAE, element(0xD7, b"\x02") + element(0xEC, b"")))
    head = head.removesuffix(b"\x1f\x43\xb6\x75")  # no Cluster after the Tracks
    assert head.endswith(b"\xec\x80")
    assert container_holds(head) == "video"
    assert container_holds(head[:-1]) is None


@pytest.mark.parametrize(
    "head, at, read",
    [
        (b"\x81", 0, (0x81, 1)),
        (b"\x00\x40\x05", 1, (0x4005, 2)),  # ends at the window's end
        (b"\x01" + b"\xff" * 7, 0, (0x01FFFFFFFFFFFFFF, 8)),
        (b"\x40", 0, None),  # its second byte out of sight
        (b"\x01" + b"\xff" * 6, 0, None),
        (b"\x81", 1, None),
    ],
)
def test_a_variable_length_integer_is_read_whole_or_is_out_of_sight(head, at, read):
    from gateway.uploads.sniff_audio import _OutOfSight, _vint

    if read is None:
        with pytest.raises(_OutOfSight):
            _vint(head, at)
    else:
        assert _vint(head, at) == read


@pytest.mark.parametrize(
    "head, holds, extension",
    [
        (ogg(OPUS), "audio", ".opus"),
        (ogg(VORBIS), "audio", ".ogg"),
        (ogg(FLAC_OGG), "audio", ".oga"),
        (ogg(b"Speex   "), "audio", ".oga"),
        (ogg(OPUS, OPUS), "audio", ".opus"),
        (ogg(OPUS, VORBIS), "audio", ".ogg"),
        (ogg(b"fishead\0", OPUS), "audio", ".opus"),  # a skeleton stream is no media
        (ogg(THEORA, VORBIS), "video", ".ogg"),
        (ogg(b"\x80daala"), "video", ".ogg"),
        (ogg(b"BBCD\0"), "video", ".ogg"),
        (ogg(b"OVP80"), "video", ".ogg"),
        (ogg(b"\x01video\0"), "video", ".ogg"),
        (ogg(b"\x80kate"), None, ".ogg"),
        (ogg(b"WhatIsIt"), None, ".ogg"),
        (ogg(OPUS, then=False), None, ".ogg"),  # more first pages may follow
        (ogg(OPUS)[:40], None, ".ogg"),
        (ogg(OPUS)[:30], None, ".ogg"),
        (ogg(OPUS, then=False) + b"junkjunk" * 5, None, ".opus"),
    ],
)
def test_an_ogg_holds_what_its_first_pages_say(head, holds, extension):
    assert container_holds(head) == holds
    assert ogg_extension(head) == extension


def test_other_bytes_hold_nothing_known():
    assert container_holds(b"RIFF\0\0\0\0WAVE") is None
    assert container_holds(b"") is None


@given(st.binary(max_size=300), st.sampled_from([b"", b"\0\0\0\x18ftyp", b"\x1a\x45\xdf\xa3",
                                                 b"OggS", b"ID3", b"\xff\xfb", b"\xff\xf1"]))  # fmt: skip
def test_no_bytes_make_sniffing_raise(tail, start):
    head = start + tail
    sniff(head)
    container_holds(head)
    ogg_extension(head)


# -- real files ----------------------------------------------------------------------------------
REAL = {
    "wav": ("audio/wav", ".wav", ""),
    "rf64": ("audio/wav", ".wav", ""),
    "aiff": ("audio/aiff", ".aiff", ""),
    "caf": ("audio/x-caf", ".caf", ""),
    "flac": ("audio/flac", ".flac", ""),
    "mp3": ("audio/mpeg", ".mp3", ""),
    "aac": ("audio/aac", ".aac", ""),
    "amr": ("audio/amr", ".amr", ""),
    # PyAV's ipod muxer writes the track list at the end: the M4A brand leads, unsettled
    "m4a": ("audio/mp4", ".m4a", "video/mp4"),
    "opus": ("audio/ogg", ".opus", ""),
    "vorbis": ("audio/ogg", ".ogg", ""),
    "webm": ("audio/webm", ".webm", ""),
    "mka": ("audio/x-matroska", ".mka", ""),
}


@pytest.fixture(scope="module")
def real_files() -> dict[str, bytes]:
    return {kind: samples.audio(kind, 0.3)[:8192] for kind in REAL}


@pytest.mark.parametrize("kind", sorted(REAL))
def test_real_files_are_audio_by_their_bytes(real_files, kind):
    mime, extension, alternative = REAL[kind]
    sniffed = sniff(real_files[kind])
    assert sniffed == SniffedType(mime, extension, alternative)
    assert sniffed.file_type == "audio"


@pytest.mark.parametrize("kind", sorted(REAL))
def test_a_shorter_window_gives_the_answer_or_no_answer_never_another(real_files, kind):
    """Cut anywhere (a short file, a first read): the type is the file's, or unsettled between
    the same two, or unknown (then the allow-list refuses it, or */* stores it as bytes)."""
    mime, _, _ = REAL[kind]
    head = real_files[kind]
    for end in range(len(head) if len(head) < 1200 else 1200):
        sniffed = sniff(head[:end])
        if sniffed is None or sniffed.mime.startswith("text/"):
            continue
        assert {sniffed.mime, sniffed.alternative} <= {mime, twin(mime), ""}, end
        assert sniffed.mime == mime or sniffed.alternative == mime, end


def test_an_mp4_with_audio_only_and_its_track_list_first_is_audio():
    sniffed = sniff(mp4(b"soun"))
    assert sniffed == SniffedType("audio/mp4", ".m4a")
    assert sniff(mp4(b"vide", brand=b"M4A ")) == SniffedType("video/mp4", ".mp4")
    assert sniff(mp4(b"soun", moov_first=False)) == SniffedType("video/mp4", ".mp4", "audio/mp4")
    assert sniff(mp4(b"soun", moov_first=False, brand=b"M4A ")) == SniffedType(
        "audio/mp4", ".m4a", "video/mp4"
    )


def test_webm_and_matroska_by_their_tracks():
    assert sniff(ebml(track(2))) == SniffedType("audio/webm", ".webm")
    assert sniff(ebml(track(1))) == SniffedType("video/webm", ".webm")
    assert sniff(ebml(track(2), doctype=b"matroska")) == SniffedType("audio/x-matroska", ".mka")
    assert sniff(ebml(track(1), doctype=b"matroska")) == SniffedType("video/x-matroska", ".mkv")
    assert sniff(ebml(track(2), before=b"\x1f\x43\xb6\x75" + UNKNOWN_SIZE)) == SniffedType(
        "video/webm", ".webm", "audio/webm"
    )


def test_ogg_by_its_codecs():
    assert sniff(ogg(OPUS)) == SniffedType("audio/ogg", ".opus")
    assert sniff(ogg(THEORA, VORBIS)) == SniffedType("video/ogg", ".ogv")
    assert sniff(ogg(b"WhatIsIt")) == SniffedType("audio/ogg", ".ogg", "video/ogg")


# -- names -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mime, expected",
    [
        ("audio/x-wav", "audio/wav"),
        ("audio/wave", "audio/wav"),
        ("audio/vnd.wave", "audio/wav"),
        ("audio/x-pn-wav", "audio/wav"),
        ("audio/x-aiff", "audio/aiff"),
        ("audio/x-flac", "audio/flac"),
        ("audio/mp3", "audio/mpeg"),
        ("audio/x-mp3", "audio/mpeg"),
        ("audio/mpeg3", "audio/mpeg"),
        ("audio/x-mpeg", "audio/mpeg"),
        ("audio/x-aac", "audio/aac"),
        ("audio/aacp", "audio/aac"),
        ("audio/x-m4a", "audio/mp4"),
        ("audio/m4a", "audio/mp4"),
        ("audio/opus", "audio/ogg"),
        ("audio/vorbis", "audio/ogg"),
        ("audio/wav", "audio/wav"),
        ("video/webm", "video/webm"),
    ],
)
def test_clients_names_for_a_type_are_one_name(mime, expected):
    assert canonical(mime) == expected


@pytest.mark.parametrize(
    "mime, expected",
    [
        ("audio/x-wav", SniffedType("audio/wav", ".wav")),
        ("audio/webm", SniffedType("audio/webm", ".webm")),
        ("video/webm", SniffedType("video/webm", ".webm")),
        ("audio/x-m4a", SniffedType("audio/mp4", ".m4a")),
        ("video/mp4", SniffedType("video/mp4", ".mp4")),
        ("image/png", SniffedType("image/png", ".png")),
        ("text/plain", None),
        ("audio/unheard-of", None),
    ],
)
def test_a_named_type_has_its_extension(mime, expected):
    assert type_of_mime(mime) == expected


def test_twins_pair_a_containers_audio_and_video_types():
    pairs = [("video/mp4", "audio/mp4"), ("video/webm", "audio/webm"),
             ("video/x-matroska", "audio/x-matroska"), ("video/ogg", "audio/ogg"),
             ("video/3gpp", "audio/3gpp")]  # fmt: skip
    for video, audio in pairs:
        assert twin(video) == audio and twin(audio) == video
    assert twin("audio/mpeg") == twin("video/quicktime") == ""
    assert extension_of("audio/3gpp") == ".3gp" and extension_of("video/x-matroska") == ".mkv"
    assert extension_of("audio/flac") == ".flac" and extension_of("image/png") == ""


@pytest.mark.parametrize(
    "extension, mime",
    [
        (".opus", "audio/ogg"),
        (".oga", "audio/ogg"),
        (".ogg", "audio/ogg"),
        (".wav", "audio/wav"),
        (".aiff", "audio/aiff"),
        (".caf", "audio/x-caf"),
        (".flac", "audio/flac"),
        (".amr", "audio/amr"),
        (".awb", "audio/amr-wb"),
        (".mp3", "audio/mpeg"),
        (".aac", "audio/aac"),
        (".m4a", "audio/mp4"),
        (".mka", "audio/x-matroska"),
        (".mkv", "video/x-matroska"),
        (".ogv", "video/ogg"),
        (".webm", "video/webm"),  # either: served as the video type
        (".3gp", "video/3gpp"),
        (".json", "application/json"),
    ],
)
def test_a_keys_extension_names_its_type(extension, mime):
    assert mime_of_extension(extension) == mime


# -- the allow-list at ingest -------------------------------------------------------------------------
def test_an_unsettled_container_is_admitted_as_the_type_the_list_allows():
    head = mp4(b"soun", moov_first=False)  # video/mp4 or audio/mp4
    assert checked_type(head, ("video/*", "audio/*"), name="a") == SniffedType(
        "video/mp4", ".mp4", "audio/mp4"
    )
    assert checked_type(head, ("audio/*",), name="a") == SniffedType(
        "audio/mp4", ".m4a", "video/mp4"
    )
    assert checked_type(head, ("video/mp4",), name="a") == SniffedType(
        "video/mp4", ".mp4", "audio/mp4"
    )
    with pytest.raises(errors.UnsupportedType, match="'a' is video/mp4; allowed: image/"):
        checked_type(head, ("image/*",), name="a")


def test_a_settled_container_is_admitted_only_as_what_it_holds():
    with pytest.raises(errors.UnsupportedType, match="is audio/mp4; allowed: video/"):
        checked_type(mp4(b"soun"), ("video/*",), name="a")
    with pytest.raises(errors.UnsupportedType, match="is video/webm; allowed: audio/"):
        checked_type(ebml(track(1)), ("audio/*",), name="a")
