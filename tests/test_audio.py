"""Audio in the worker (gateway/processing/audio.py), on real files made here: WAV by the
standard library's ``wave``, the rest encoded by PyAV and, as an independent encoder, by
Debian's ``ffmpeg``. Each: described (duration within a frame, rate, channels), peaks that match
the signal, an Opus copy of lossless audio that decodes to the same duration; bad input ends in
one exact refusal."""

from __future__ import annotations

import io
import json
import random
import re
import struct
import subprocess
from fractions import Fraction

import av
import media_samples as samples
import pytest
from PIL import Image

from gateway.processing.audio import (
    caf_claim,
    claimed_seconds,
    mp3_has_length_frame,
    ogg_cut,
    wav_claim,
)
from gateway.processing.audio_waveform import PNG_HEIGHT
from gateway.processing.derive import (
    AudioOptions,
    DeriveOptions,
    Undecodable,
    derive,
    settled_type,
)
from gateway.processing.sandbox import SandboxError, run
from gateway.uploads.sniff import sniff

# 200 points: 1 s of audio at 48 kHz is 245 samples a point, more than two periods of a 440 Hz
# sine, so that every point holds its peaks.
OPTIONS = DeriveOptions(audio=AudioOptions(opus_min_bytes=10_000, waveform_points=200))
SINE = round(0.5 * 32767)  # 0.5 of full scale, as media_samples.pcm writes it
LOSSLESS = {"wav", "rf64", "aiff", "caf", "flac"}
# Samples per frame: the duration is within one of them. AAC's encoder adds 1024 samples of
# priming that ADTS cannot signal, and PyAV's MP4 muxer writes no edit list to skip them.
FRAME = {"mp3": 1152, "aac": 2048, "m4a": 2048, "vorbis": 1024, "amr": 160, "flac": 4608}
FRAME_DEFAULT = 960  # Opus; PCM is exact


def derived(tmp_path, data: bytes, mime: str | None = None, options=OPTIONS, name="original"):
    path = tmp_path / name
    path.write_bytes(data)
    return derive(path, mime or sniff(data[:8192]).mime, options)


def variants(result) -> dict:
    return {v.name: v for v in result.variants}


def peaks(result) -> dict:
    return json.loads(variants(result)["peaks"].data)


def decoded(data_or_path) -> tuple[int, int, int]:
    """(samples, sample rate, channels) of the first audio stream, decoded."""
    source = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else str(data_or_path)
    with av.open(source) as container:
        stream = container.streams.audio[0]
        count = sum(frame.samples for frame in container.decode(stream))
        return count, stream.codec_context.sample_rate, stream.codec_context.channels


def check_described(result, *, seconds, rate, channels, frame):
    props = result.properties
    assert abs(props["duration"] - seconds) <= frame / rate + 1e-9, props["duration"]
    assert (props["sampleRate"], props["channels"]) == (rate, channels)
    # the file's layout, or "N channels" where it names none (a plain WAV or AIFF)
    assert props["channelLayout"] in ({1: "mono", 2: "stereo"}[channels], f"{channels} channels")
    json_variant = variants(result)["peaks"]
    assert (json_variant.content_type, json_variant.extension) == ("application/json", ".json")
    assert (json_variant.width, json_variant.height) == (None, None)
    document = peaks(result)
    assert (document["version"], document["bits"]) == (2, 16)
    assert (document["sample_rate"], document["channels"]) == (rate, channels)
    assert 0 < document["length"] <= OPTIONS.audio.waveform_points
    assert len(document["data"]) == document["length"] * 2 * channels
    png = variants(result)["waveform"]
    image = Image.open(io.BytesIO(png.data))
    assert image.format == "PNG" and image.size == (png.width, png.height)
    assert png.height == PNG_HEIGHT and (png.content_type, png.extension) == ("image/png", ".png")


def check_sine_peaks(result, *, tolerance):
    """The peaks are the sine's, and so is every point's (each holds two periods or more; a
    sample falls within 0.03 rad of the crest, 7 below it at most)."""
    data = peaks(result)["data"]
    assert max(data) == pytest.approx(SINE, abs=tolerance)
    assert min(data) == pytest.approx(-SINE, abs=tolerance)
    middle = data[len(data) // 4 : 3 * len(data) // 4]  # the codecs' priming and padding aside
    assert all(abs(abs(level) - SINE) <= tolerance + 7 for level in middle)


def check_opus(result, *, seconds, channels, bit_rate):
    """The copy is a file next to the original; flushed to its end, it decodes to the
    original's duration within a millisecond (Ogg Opus trims the encoder's delay and padding
    by its pre-skip and last granule position)."""
    opus = variants(result)["opus"]
    assert opus.content_type == "audio/ogg" and opus.extension == ".ogg" and opus.data == b""
    assert opus.path is not None and opus.path.name == "opus.ogg"
    assert opus.path.read_bytes().startswith(b"OggS")
    count, rate, got_channels = decoded(opus.path)
    assert rate == 48_000 and got_channels == channels
    assert abs(count / rate - seconds) <= 0.001, count
    assert result.properties["transcode"] == {
        "codec": "opus",
        "bitRate": bit_rate,
        "size": opus.path.stat().st_size,
    }


# -- every format, by PyAV -----------------------------------------------------------------------
FORMATS = {  # kind: (type, codec, container)
    "wav": ("audio/wav", "pcm_s16le", "wav"),
    "rf64": ("audio/wav", "pcm_s16le", "wav"),
    "aiff": ("audio/aiff", "pcm_s16be", "aiff"),
    "caf": ("audio/x-caf", "pcm_s16le", "caf"),
    "flac": ("audio/flac", "flac", "flac"),
    "mp3": ("audio/mpeg", "mp3", "mp3"),
    "aac": ("audio/aac", "aac", "adts"),
    "m4a": ("audio/mp4", "aac", "mp4"),
    "opus": ("audio/ogg", "opus", "ogg"),
    "webm": ("audio/webm", "opus", "webm"),
    "mka": ("audio/x-matroska", "opus", "matroska"),
    "vorbis": ("audio/ogg", "vorbis", "ogg"),
    "amr": ("audio/amr", "amr_nb", "amr"),
}


@pytest.mark.parametrize("kind", sorted(FORMATS))
def test_each_format_is_described_with_peaks_at_the_sines_amplitude(tmp_path, kind):
    data = samples.audio(kind, 1.0)
    mime, codec, container = FORMATS[kind]
    assert sniff(data[:8192]).mime == mime
    result = derived(tmp_path, data)
    rate, channels = (8000, 1) if kind == "amr" else (48_000, 2)
    check_described(
        result, seconds=1.0, rate=rate, channels=channels, frame=FRAME.get(kind, FRAME_DEFAULT)
    )
    assert (result.properties["codec"], result.properties["container"]) == (codec, container)
    assert result.mime == ""  # the sniffed type stands
    assert result.properties["lossless"] is (kind in LOSSLESS)
    if kind in LOSSLESS:
        check_sine_peaks(result, tolerance=1)
        check_opus(result, seconds=1.0, channels=2, bit_rate=96_000)
        assert [v.name for v in result.variants] == ["peaks", "waveform", "opus"]
    else:
        # AMR at 12.2 kb/s is a telephone codec; the others keep a sine within a few %
        check_sine_peaks(result, tolerance=SINE * (0.35 if kind == "amr" else 0.08))
        assert result.properties["transcode"] == {"skipped": f"already compressed ({codec})"}
        assert [v.name for v in result.variants] == ["peaks", "waveform"]


# -- cross-checked with Debian's ffmpeg as the encoder ----------------------------------------------------
@pytest.fixture(scope="module")
def ffmpeg() -> str:
    from e2e_harness import _ensure

    return _ensure("ffmpeg", ["ffmpeg"])


FFMPEG = {  # kind: (arguments, type, codec, lossless)
    "mp3": (["-c:a", "libmp3lame", "-b:a", "128k", "-f", "mp3"], "audio/mpeg", "mp3"),
    "m4a": (["-c:a", "aac", "-f", "ipod"], "audio/mp4", "aac"),
    "m4a-faststart": (["-c:a", "aac", "-movflags", "+faststart", "-f", "mp4"], "audio/mp4", "aac"),
    "opus": (["-c:a", "libopus", "-f", "ogg"], "audio/ogg", "opus"),
    "webm": (["-c:a", "libopus", "-f", "webm"], "audio/webm", "opus"),
    "vorbis": (["-c:a", "libvorbis", "-f", "ogg"], "audio/ogg", "vorbis"),
    "flac": (["-c:a", "flac", "-f", "flac"], "audio/flac", "flac"),
    "ogg-flac": (["-c:a", "flac", "-f", "ogg"], "audio/ogg", "flac"),
    "aiff": (["-c:a", "pcm_s16be", "-f", "aiff"], "audio/aiff", "pcm_s16be"),
    "caf": (["-c:a", "pcm_s24le", "-f", "caf"], "audio/x-caf", "pcm_s24le"),
    "bwf": (["-c:a", "pcm_s24le", "-write_bext", "1", "-f", "wav"], "audio/wav", "pcm_s24le"),
}


def ffmpeg_encode(ffmpeg: str, tmp_path, data: bytes, arguments: list[str]) -> bytes:
    source, target = tmp_path / "source.wav", tmp_path / "encoded"
    source.write_bytes(data)
    subprocess.run(
        [ffmpeg, "-v", "error", "-y", "-i", str(source), *arguments, str(target)], check=True
    )
    return target.read_bytes()


@pytest.mark.parametrize("kind", sorted(FFMPEG))
def test_files_from_ffmpeg_are_described_as_pyav_reads_them(tmp_path, ffmpeg, kind):
    arguments, mime, codec = FFMPEG[kind]
    data = ffmpeg_encode(ffmpeg, tmp_path, samples.wav(1.0), arguments)
    sniffed = sniff(data[:8192])
    assert sniffed.mime == mime and sniffed.file_type == "audio"
    result = derived(tmp_path, data)
    frame = FRAME.get(kind.split("-")[0], FRAME_DEFAULT)
    check_described(result, seconds=1.0, rate=48_000, channels=2, frame=frame)
    assert result.properties["codec"] == codec
    if result.properties["lossless"]:
        check_sine_peaks(result, tolerance=1)
        check_opus(result, seconds=1.0, channels=2, bit_rate=96_000)
    else:
        check_sine_peaks(result, tolerance=SINE * 0.08)
        assert "opus" not in variants(result)


def test_the_opus_copy_matches_ffmpegs_at_the_same_bit_rate(tmp_path, ffmpeg):
    """The same encoder (libopus) at the same settings: sizes within a few %."""
    source = samples.wav(3.0, signal="noise", amplitude=0.3)
    theirs = ffmpeg_encode(
        ffmpeg, tmp_path, source, ["-c:a", "libopus", "-b:a", "96k", "-f", "ogg"]
    )
    ours = variants(derived(tmp_path, source))["opus"].path.stat().st_size
    assert ours == pytest.approx(len(theirs), rel=0.05)


# -- signals ------------------------------------------------------------------------------------------
def test_silence_is_flat(tmp_path):
    result = derived(tmp_path, samples.wav(1.0, signal="silence"))
    assert set(peaks(result)["data"]) == {0}


def test_noise_reaches_its_amplitude_and_both_channels_are_kept(tmp_path):
    result = derived(tmp_path, samples.wav(1.0, signal="noise", amplitude=0.25))
    data = peaks(result)["data"]
    left, right = data[0::4] + data[1::4], data[2::4] + data[3::4]
    for channel in (left, right):
        assert max(channel) == pytest.approx(8192, abs=200)
        assert min(channel) == pytest.approx(-8192, abs=200)


def test_mono_audio_gets_a_mono_opus_copy_at_the_mono_bit_rate(tmp_path):
    data = samples.wav(2.0, rate=44_100, channels=1)
    result = derived(tmp_path, data)
    check_described(result, seconds=2.0, rate=44_100, channels=1, frame=1)
    check_opus(result, seconds=2.0, channels=1, bit_rate=64_000)


def test_the_bit_rates_are_the_settings(tmp_path):
    options = DeriveOptions(
        audio=AudioOptions(opus_min_bytes=0, opus_mono_bit_rate=24_000, opus_stereo_bit_rate=48_000)
    )
    stereo = derived(tmp_path, samples.wav(1.0), options=options, name="s")
    mono = derived(tmp_path, samples.wav(1.0, channels=1), options=options, name="m")
    assert stereo.properties["transcode"]["bitRate"] == 48_000
    assert mono.properties["transcode"]["bitRate"] == 24_000
    assert mono.properties["transcode"]["size"] < stereo.properties["transcode"]["size"]


def test_tags_are_read_from_the_container(tmp_path):
    tags = {"title": "Dawn chorus", "artist": "Field Recorder", "album": "Site 4",
            "date": "2026-05-01", "comment": "near the pond", "genre": "not kept"}  # fmt: skip
    data = samples.encode(samples.wav(0.5), "flac", "flac", metadata=tags)
    result = derived(tmp_path, data)
    assert result.properties["tags"] == {
        "title": "Dawn chorus",
        "artist": "Field Recorder",
        "album": "Site 4",
        "date": "2026-05-01",
        "comment": "near the pond",
        "encoder": f"Lavf{av.library_versions['libavformat'][0]}."
        + ".".join(str(n) for n in av.library_versions["libavformat"][1:]),
    }


def test_vorbis_comments_in_ogg_are_tags_too(tmp_path):
    data = samples.encode(samples.wav(0.5), "ogg", "libopus", metadata={"TITLE": "Rain"})
    assert derived(tmp_path, data).properties["tags"]["title"] == "Rain"


# -- the Opus copy: when ------------------------------------------------------------------------
def test_lossless_audio_under_the_threshold_is_not_transcoded(tmp_path):
    options = DeriveOptions(audio=AudioOptions(opus_min_bytes=1 << 20))
    result = derived(tmp_path, samples.wav(1.0), options=options)
    assert result.properties["transcode"] == {"skipped": "smaller than 1048576 bytes"}
    assert "opus" not in variants(result)


def test_no_opus_copy_that_would_not_be_smaller(tmp_path):
    """8-bit mono at 8 kHz is 64 kb/s: an Opus copy at 72 kb/s would be larger."""
    import wave

    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(1)
        writer.setframerate(8000)
        writer.writeframes(bytes(128 + (i % 50) for i in range(80_000)))
    options = DeriveOptions(audio=AudioOptions(opus_min_bytes=0, opus_mono_bit_rate=72_000))
    result = derived(tmp_path, out.getvalue(), options=options)
    assert result.properties["codec"] == "pcm_u8" and result.properties["lossless"] is True
    assert result.properties["transcode"] == {
        "skipped": "an Opus copy at 72000 bit/s would not be smaller"
    }


# -- containers that may hold video ------------------------------------------------------------------
def test_an_mp4_typed_as_video_that_holds_only_audio_is_audio(tmp_path):
    data = samples.encode(samples.wav(1.0), "mp4", "aac")
    assert sniff(data[:8192]).mime == "video/mp4"  # its track list is at the end
    result = derived(tmp_path, data, "video/mp4")
    assert result.mime == "audio/mp4"
    assert [v.name for v in result.variants] == ["peaks", "waveform"]
    assert result.properties["container"] == "mp4"


def test_an_mp4_typed_as_audio_that_holds_video_is_video(tmp_path):
    data = samples.mp4(2)  # an MP4 with a video track, typed as if it were audio-only
    result = derived(tmp_path, data, "audio/mp4")
    assert result.mime == "video/mp4"
    assert [v.name for v in result.variants] == ["poster"]


def test_an_album_cover_does_not_make_a_song_a_video(tmp_path, ffmpeg):
    song, cover = tmp_path / "song.mp3", tmp_path / "cover.png"
    song.write_bytes(samples.audio("mp3", 1.0))
    cover.write_bytes(samples.png(64, 64, "RGB"))
    subprocess.run(
        [ffmpeg, "-v", "error", "-i", str(song), "-i", str(cover), "-map", "0", "-map", "1",
         "-c", "copy", "-disposition:v", "attached_pic", str(tmp_path / "covered.mp3")],
        check=True,
    )  # fmt: skip
    data = (tmp_path / "covered.mp3").read_bytes()
    with av.open(io.BytesIO(data)) as container:
        assert len(container.streams.video) == 1  # the cover
    result = derived(tmp_path, data, "audio/mpeg")
    assert result.mime == "" and "peaks" in variants(result)


@pytest.mark.parametrize(
    "mime, video, audio, expected",
    [
        ("video/mp4", True, True, "video/mp4"),
        ("video/mp4", False, True, "audio/mp4"),
        ("audio/mp4", True, False, "video/mp4"),
        ("audio/webm", False, True, "audio/webm"),
        ("video/ogg", False, True, "audio/ogg"),
        ("audio/mpeg", True, True, "audio/mpeg"),  # not a container that holds video
        ("video/quicktime", False, True, "video/quicktime"),
    ],
)
def test_the_streams_settle_a_containers_type(mime, video, audio, expected):
    assert settled_type(mime, has_video=video, has_audio=audio) == expected


def test_a_container_with_neither_audio_nor_video_is_undecodable():
    with pytest.raises(Undecodable, match=r"^The file holds neither audio nor video\.$"):
        settled_type("video/webm", has_video=False, has_audio=False)


# -- bad input: each one exact outcome ----------------------------------------------------------------
def wav_claiming(data_bytes: int, *, rate=48_000, channels=2, body=b"") -> bytes:
    """A WAV header whose data chunk claims ``data_bytes``, followed by ``body``."""
    block = 2 * channels
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block, block, 16)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", data_bytes)
    return b"RIFF" + struct.pack("<I", 4 + len(chunks) + len(body)) + b"WAVE" + chunks + body


def flac_claiming(data: bytes, total_samples: int) -> bytes:
    """A FLAC file whose STREAMINFO says ``total_samples`` (0: unknown)."""
    patched = bytearray(data)
    field = int.from_bytes(patched[18:26], "big")
    field = field & ~((1 << 36) - 1) | total_samples
    patched[18:26] = field.to_bytes(8, "big")
    return bytes(patched)


def mp3_claiming(data: bytes, frames: int) -> bytes:
    """An MP3 whose Xing/Info frame counts ``frames``."""
    at = max(data.find(b"Xing"), data.find(b"Info"))
    assert at > 0 and struct.unpack(">I", data[at + 4 : at + 8])[0] & 1  # has a frame count
    return data[: at + 8] + struct.pack(">I", frames) + data[at + 12 :]


def test_a_truncated_mp3_is_refused_with_both_durations(tmp_path):
    data = samples.audio("mp3", 1.0)
    with pytest.raises(Undecodable) as refused:
        derived(tmp_path, data[: len(data) // 2])
    assert re.fullmatch(
        r"The audio is truncated: its header says 1\.000 s, the file holds 0\.[45]\d\d s\.",
        str(refused.value),
    )


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("wav", r"The audio is truncated: its header says 2\.000 s, the file holds 1\.800 s\."),
        ("aiff", r"The audio is truncated: its header says 2\.000 s, the file holds 1\.800 s\."),
        ("caf", r"The audio is truncated: its header says 2\.000 s, the file holds 1\.800 s\."),
        (
            "webm",
            r"The audio is truncated: its header says 2\.0\d\d s, the file holds 1\.8\d\d s\.",
        ),
        (
            "mp3",
            r"The audio is truncated: its header says 2\.000 s, the file holds 1\.[78]\d\d s\.",
        ),
        ("opus", r"The audio is truncated: the file ends inside an Ogg page, after 0\.99\d s\."),
        ("flac", r"The audio is damaged at 1\.\d{3} s: Invalid data found when processing input\."),
    ],
)
def test_a_file_cut_short_is_refused_as_truncated_or_damaged(tmp_path, kind, reason):
    """Where the header declares a length, a file that decodes to 0.1 s less is truncated;
    an Ogg declares none but is made of pages, and its last one is cut; a FLAC frame cut in
    the middle fails to decode."""
    data = samples.audio(kind, 2.0)
    with pytest.raises(Undecodable) as refused:
        derived(tmp_path, data[: len(data) * 9 // 10])
    assert re.fullmatch(reason, str(refused.value)), str(refused.value)


def test_an_mp4_cut_before_its_track_list_cannot_be_read(tmp_path):
    data = samples.audio("m4a", 1.0)  # the track list at the end
    with pytest.raises(Undecodable) as refused:
        derived(tmp_path, data[: len(data) // 2])
    assert str(refused.value) == (
        "The audio cannot be decoded: Invalid data found when processing input."
    )


def test_a_wav_whose_header_claims_more_than_it_holds_is_truncated(tmp_path):
    body = samples.pcm(1.0)
    with pytest.raises(Undecodable) as refused:
        derived(tmp_path, wav_claiming(60 * 48_000 * 4, body=body))
    assert str(refused.value) == (
        "The audio is truncated: its header says 60.000 s, the file holds 1.000 s."
    )


def test_a_wav_whose_header_claims_less_is_what_it_claims(tmp_path):
    body = samples.pcm(1.0)
    result = derived(tmp_path, wav_claiming(48_000 * 4 // 2, body=body))
    assert result.properties["duration"] == 0.5


@pytest.mark.parametrize("size", [0, 0xFFFFFFFF])
def test_a_wav_written_live_declares_no_length_and_is_read_to_its_end(tmp_path, size):
    result = derived(tmp_path, wav_claiming(size, body=samples.pcm(1.0)))
    assert result.properties["duration"] == 1.0


@pytest.mark.parametrize(
    "make, claim",
    [
        (lambda: wav_claiming(0x7FFFFFF0, rate=8000, channels=1, body=b"\0" * 16), 134218),
        (lambda: mp3_claiming(samples.audio("mp3", 0.5), 10 * 3600 * 48_000 // 1152), 36000),
        (lambda: flac_claiming(samples.audio("flac", 0.5), 10 * 3600 * 48_000), 36000),
    ],
    ids=["wav", "mp3", "flac"],
)
def test_a_few_bytes_that_claim_hours_are_refused_as_an_audio_bomb(tmp_path, make, claim):
    data = make()
    assert len(data) < 60_000
    with pytest.raises(Undecodable) as refused:
        derived(tmp_path, data)
    assert str(refused.value) == (
        f"The audio claims to last {claim} s, longer than the limit of 14400 s: refused as an "
        "audio bomb."
    )


def test_a_claim_of_more_samples_than_allowed_is_refused(tmp_path):
    options = DeriveOptions(audio=AudioOptions(max_samples=50_000))
    with pytest.raises(Undecodable) as refused:
        derived(tmp_path, samples.wav(1.0), options=options)
    assert str(refused.value) == (
        "The audio claims 96000 samples, more than the limit of 50000: refused as an audio bomb."
    )


@pytest.fixture
def flac_without_a_length() -> bytes:
    """2 s of FLAC whose STREAMINFO leaves the length unknown (as an encoder writing to a pipe
    does): only decoding can tell how long it is."""
    return flac_claiming(samples.audio("flac", 2.0, signal="silence"), 0)


def test_audio_that_decodes_longer_than_allowed_is_stopped(tmp_path, flac_without_a_length):
    options = DeriveOptions(audio=AudioOptions(max_duration=1.0))
    with pytest.raises(Undecodable) as refused:
        derived(tmp_path, flac_without_a_length, options=options)
    assert str(refused.value) == (
        "The audio lasts longer than the limit of 1 s: refused as an audio bomb."
    )


def test_audio_that_decodes_to_more_samples_than_allowed_is_stopped(
    tmp_path, flac_without_a_length
):
    options = DeriveOptions(audio=AudioOptions(max_samples=100_000))
    with pytest.raises(Undecodable) as refused:
        derived(tmp_path, flac_without_a_length, options=options)
    assert str(refused.value) == (
        "The audio decodes to more than the limit of 100000 samples: refused as an audio bomb."
    )


def test_decoding_is_stopped_at_its_deadline(tmp_path):
    options = DeriveOptions(audio=AudioOptions(max_decode_seconds=1e-9))
    with pytest.raises(Undecodable) as refused:
        derived(tmp_path, samples.wav(1.0), options=options)
    assert re.fullmatch(
        r"Decoding the audio took more than 1e-09 s of CPU time \(at 0\.\d{3} s of it\)\.",
        str(refused.value),
    )


@pytest.mark.parametrize("budget, refused", [(1.0, False), (0.999, True)])
def test_decoding_that_uses_exactly_its_cpu_budget_is_not_stopped(
    tmp_path, monkeypatch, budget, refused
):
    """A CPU clock that reads 0 s when decoding starts and 1 s at every check after."""
    from gateway.processing import audio

    readings = iter([0.0])
    monkeypatch.setattr(audio.time, "process_time", lambda: next(readings, 1.0))
    options = DeriveOptions(audio=AudioOptions(max_decode_seconds=budget))
    if refused:
        with pytest.raises(Undecodable) as stopped:
            derived(tmp_path, samples.wav(1.0), options=options)
        assert str(stopped.value) == (
            "Decoding the audio took more than 0.999 s of CPU time (at 0.085 s of it)."
        )
    else:
        assert derived(tmp_path, samples.wav(1.0), options=options).properties["duration"] == 1.0


def _random(size: int) -> bytes:
    return random.Random(7).randbytes(size)


def test_random_bytes_after_a_wav_header_are_noise(tmp_path):
    """PCM has no structure to break: any bytes are samples."""
    body = _random(48_000 * 4)
    result = derived(tmp_path, wav_claiming(len(body), body=body))
    data = peaks(result)["data"]
    assert result.properties["duration"] == 1.0
    assert max(data) > 32_000 and min(data) < -32_000


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("flac", "No audio could be decoded from the file."),
        ("mp3", "The audio cannot be decoded: Invalid data found when processing input."),
        ("aac", "The audio has no sample rate or no channels."),
        ("opus", "The audio cannot be decoded: End of file."),
    ],
)
def test_random_bytes_after_a_valid_header_are_refused(tmp_path, kind, reason):
    data = samples.audio(kind, 0.5)
    header = data.index(b"\xff\xf8") if kind == "flac" else {"mp3": 10, "aac": 7, "opus": 200}[kind]
    with pytest.raises(Undecodable) as refused:
        derived(tmp_path, data[:header] + _random(20_000), sniff(data[:8192]).mime)
    assert str(refused.value) == reason


def test_a_damaged_frame_is_refused_with_its_position(tmp_path):
    data = bytearray(samples.audio("aac", 1.0))
    data[len(data) // 2 : len(data) // 2 + 200] = _random(200)
    with pytest.raises(Undecodable) as refused:
        derived(tmp_path, bytes(data))
    assert re.fullmatch(
        r"The audio is damaged at 0\.\d{3} s: Invalid data found when processing input\.",
        str(refused.value),
    )


def test_a_header_alone_holds_no_audio(tmp_path):
    with pytest.raises(Undecodable, match=r"^No audio could be decoded from the file\.$"):
        derived(tmp_path, wav_claiming(0))


def test_in_the_sandbox_a_bomb_is_an_error_and_the_next_file_is_fine(tmp_path):
    bomb = tmp_path / "bomb"
    bomb.write_bytes(wav_claiming(0x7FFFFFF0, rate=8000, channels=1, body=b"\0" * 16))
    with pytest.raises(SandboxError, match="refused as an audio bomb") as refused:
        run(derive, bomb, "audio/wav", OPTIONS, memory_bytes=512 << 20, timeout=60)
    assert refused.value.kind == "error"
    fine = tmp_path / "fine"
    fine.write_bytes(samples.wav(0.5))
    result = run(derive, fine, "audio/wav", OPTIONS, memory_bytes=512 << 20, timeout=60)
    assert [v.name for v in result.variants] == ["peaks", "waveform", "opus"]


def test_headers_declare_durations_only_where_they_are_the_headers(tmp_path):
    """An estimate from the bit rate (ADTS, AMR, an MP3 without a Xing frame) is no claim."""
    claims = {}
    for kind in ("wav", "flac", "mp3", "aac", "amr", "m4a", "opus", "webm"):
        path = tmp_path / kind
        path.write_bytes(samples.audio(kind, 1.0))
        with av.open(str(path)) as container:
            claims[kind] = claimed_seconds(container, container.streams.audio[0], path)
    assert claims["aac"] is None and claims["amr"] is None
    for kind in ("wav", "flac", "mp3", "m4a", "opus", "webm"):
        assert claims[kind] == pytest.approx(1.0, abs=0.05), kind


def _claim(path, data: bytes) -> float | None:
    path.write_bytes(data)
    with av.open(str(path)) as container:
        return claimed_seconds(container, container.streams.audio[0], path)


def test_an_mp3_without_a_length_frame_claims_nothing(tmp_path):
    live = {"write_xing": "0", "id3v2_version": "0"}
    data = samples.encode(samples.wav(1.0), "mp3", "libmp3lame", container_options=live)
    assert _claim(tmp_path / "a.mp3", data) is None
    assert _claim(tmp_path / "b.mp3", samples.audio("mp3", 1.0)) == pytest.approx(1.0, abs=0.05)


def test_a_matroska_whose_stream_has_no_duration_claims_its_segments(tmp_path):
    """PyAV's Matroska muxer writes the Segment's duration (1014 ms: up to the last packet's
    end), not the track's."""
    path = tmp_path / "a.webm"
    path.write_bytes(samples.audio("webm", 1.0))
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert stream.duration is None and container.duration == 1_014_000
        assert claimed_seconds(container, stream, path) == 1.014


# -- edges ----------------------------------------------------------------------------------------
def ogg_crc(page: bytes) -> int:
    """Ogg's page checksum (CRC-32, polynomial 0x04C11DB7, unreflected, over the page with the
    checksum field zeroed): FFmpeg skips a page whose checksum is wrong."""
    crc = 0
    for byte in page:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def test_an_ogg_whose_last_page_claims_hours_is_a_bomb(tmp_path):
    data = bytearray(samples.audio("opus", 1.0))
    last = data.rindex(b"OggS")
    data[last + 6 : last + 14] = struct.pack("<q", 10 * 3600 * 48_000)  # its granule position
    data[last + 22 : last + 26] = b"\0\0\0\0"
    data[last + 22 : last + 26] = struct.pack("<I", ogg_crc(bytes(data[last:])))
    with pytest.raises(Undecodable, match="claims to last 36000 s"):
        derived(tmp_path, bytes(data))


def test_limits_are_inclusive(tmp_path, flac_without_a_length):
    """Exactly the limit is allowed: 1 s of 48 kHz stereo is 96000 samples."""
    exact = DeriveOptions(audio=AudioOptions(max_duration=1.0, max_samples=96_000))
    assert derived(tmp_path, samples.wav(1.0), options=exact).properties["duration"] == 1.0
    decoded = DeriveOptions(audio=AudioOptions(max_duration=2.0, max_samples=192_000))
    result = derived(tmp_path, flac_without_a_length, options=decoded)
    assert result.properties["duration"] == 2.0


def test_at_the_duration_limit_and_one_sample_over_the_samples_limit_the_samples_refuse(
    tmp_path, flac_without_a_length
):
    """2 s of stereo decode to 96000 samples a channel: exactly the duration limit, and one
    sample over 191999 samples; the refusal names the limit that was passed."""
    options = DeriveOptions(audio=AudioOptions(max_duration=2.0, max_samples=191_999))
    with pytest.raises(Undecodable) as refused:
        derived(tmp_path, flac_without_a_length, options=options)
    assert str(refused.value) == (
        "The audio decodes to more than the limit of 191999 samples: refused as an audio bomb."
    )


@pytest.mark.parametrize("short", [0, 1])
def test_audio_that_holds_its_claim_less_the_slack_is_whole_one_sample_less_is_truncated(
    tmp_path, short
):
    """A header saying 1.1 s over 1.0 s of samples: exactly the slack of 0.1 s short is whole,
    and its points are planned from the header's length (1.1 s: 52800 samples over 196
    points), not from the timestamps; one sample more missing is truncation."""
    data = wav_claiming(52_800 * 4, body=samples.pcm(1.0)[: 192_000 - 4 * short])
    if short:
        with pytest.raises(Undecodable) as refused:
            derived(tmp_path, data)
        assert str(refused.value) == (
            "The audio is truncated: its header says 1.100 s, the file holds 1.000 s."
        )
    else:
        result = derived(tmp_path, data)
        assert result.properties["duration"] == 1.0
        assert peaks(result)["samples_per_pixel"] == 270


def test_the_duration_is_rounded_to_the_microsecond(tmp_path):
    body = samples.pcm(1.0) + b"\0" * 4  # 48001 samples: 1.0000208333 s
    assert derived(tmp_path, wav_claiming(len(body), body=body)).properties["duration"] == 1.000021


def test_without_a_declared_bit_rate_it_is_the_files_average(tmp_path, flac_without_a_length):
    result = derived(tmp_path, flac_without_a_length)
    assert result.properties["bitRate"] == round(len(flac_without_a_length) * 8 / 2.0)


def test_without_a_declared_length_the_points_come_from_the_timestamps(
    tmp_path, flac_without_a_length
):
    result = derived(tmp_path, flac_without_a_length)
    document = peaks(result)
    assert document["samples_per_pixel"] == 490  # 96000 samples over 196 points (2 % spare)
    assert document["length"] == 196


def test_a_constant_level_stays_at_that_level_to_the_last_point(tmp_path):
    """The last bucket is shorter than the others, not padded with silence."""
    level = round(0.5 * 32767)
    result = derived(tmp_path, samples.wav(1.003, signal="dc"))
    data = peaks(result)["data"]
    assert 48_144 % peaks(result)["samples_per_pixel"] != 0  # a partial last point
    assert set(data) == {level}


def test_the_opus_threshold_is_inclusive(tmp_path):
    data = samples.wav(1.0)
    at = DeriveOptions(audio=AudioOptions(opus_min_bytes=len(data), waveform_points=200))
    above = DeriveOptions(audio=AudioOptions(opus_min_bytes=len(data) + 1))
    assert "opus" in variants(derived(tmp_path, data, options=at))
    assert derived(tmp_path, data, options=above).properties["transcode"] == {
        "skipped": f"smaller than {len(data) + 1} bytes"
    }


def test_an_opus_copy_exactly_as_big_is_not_smaller(tmp_path):
    """11 s of 8-bit mono at 8 kHz: 88044 bytes; at 64032 bit/s an Opus copy would be 88044."""
    import wave

    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(1)
        writer.setframerate(8000)
        writer.writeframes(bytes(128 + (i % 50) for i in range(88_000)))
    assert len(out.getvalue()) == 88_044
    options = DeriveOptions(audio=AudioOptions(opus_min_bytes=0, opus_mono_bit_rate=64_032))
    result = derived(tmp_path, out.getvalue(), options=options)
    assert result.properties["transcode"] == {
        "skipped": "an Opus copy at 64032 bit/s would not be smaller"
    }
    cheaper = DeriveOptions(audio=AudioOptions(opus_min_bytes=0, opus_mono_bit_rate=64_024))
    assert "opus" in variants(derived(tmp_path, out.getvalue(), options=cheaper))


def test_64_bit_float_audio_is_measured_in_16_bit_units(tmp_path):
    data = samples.encode(samples.wav(1.0), "wav", "pcm_f64le")
    result = derived(tmp_path, data)
    assert result.properties["codec"] == "pcm_f64le"
    check_sine_peaks(result, tolerance=2)


def test_32_bit_integer_audio_is_measured_in_16_bit_units(tmp_path):
    data = samples.encode(samples.wav(1.0), "wav", "pcm_s32le")
    result = derived(tmp_path, data)
    assert result.properties["codec"] == "pcm_s32le"
    check_sine_peaks(result, tolerance=1)


def test_64_bit_integer_audio_is_measured_in_16_bit_units(tmp_path):
    """astats takes 64-bit integers too: they are converted first, to a format with a scale."""
    data = samples.encode(samples.wav(1.0), "wav", "pcm_s64le")
    result = derived(tmp_path, data)
    assert result.properties["codec"] == "pcm_s64le"
    check_sine_peaks(result, tolerance=1)


def test_a_stream_that_changes_its_rate_midway_is_refused(tmp_path):
    live = {"write_xing": "0", "id3v2_version": "0"}
    first = samples.encode(samples.wav(1.0), "mp3", "libmp3lame", container_options=live)
    second = samples.encode(
        samples.wav(1.0, rate=44_100), "mp3", "libmp3lame", container_options=live
    )
    with pytest.raises(Undecodable) as refused:
        derived(tmp_path, first + second)
    assert str(refused.value) == "The audio changes its sample rate, format or channels midway."


def test_tags_are_trimmed_capped_and_the_containers_come_first(tmp_path):
    import av as pyav

    out = io.BytesIO()
    with (
        pyav.open(io.BytesIO(samples.wav(0.3)), "r") as src,
        pyav.open(out, "w", format="matroska") as dst,
    ):
        stream = dst.add_stream("pcm_s16le", rate=48_000, layout="stereo")
        dst.metadata.update({"TITLE": "  Global  ", "COMMENT": "x" * 2000, "ARTIST": "   "})
        stream.metadata.update({"TITLE": "Track", "ALBUM": "From the track"})
        for frame in src.decode(audio=0):
            frame.pts = None
            for packet in stream.encode(frame):
                dst.mux(packet)
        for packet in stream.encode():
            dst.mux(packet)
    tags = derived(tmp_path, out.getvalue()).properties["tags"]
    assert tags["title"] == "Global" and tags["album"] == "From the track"
    assert tags["comment"] == "x" * 1024 and "artist" not in tags


@pytest.mark.parametrize(
    "kind, expected",
    [("wav", 1.0), ("rf64", 1.0), ("bw64", 1.0), ("caf", 1.0), ("aiff", None), ("flac", None)],
)
def test_wav_and_caf_headers_are_read_for_their_length(tmp_path, kind, expected):
    data = samples.audio("rf64" if kind == "bw64" else kind, 1.0)
    if kind == "bw64":
        data = b"BW64" + data[4:]
    path = tmp_path / kind
    path.write_bytes(data)
    assert (caf_claim if kind == "caf" else wav_claim)(path) == expected


def test_an_odd_sized_chunk_before_the_data_is_padded(tmp_path):
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)
    chunks = (b"LIST" + struct.pack("<I", 3) + b"abc\0" + b"fmt " + struct.pack("<I", 16) + fmt
              + b"data" + struct.pack("<I", 16000) + b"\0" * 16000)  # fmt: skip
    path = tmp_path / "w.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks)
    assert wav_claim(path) == 1.0


@pytest.mark.parametrize(
    "head",
    [b"RIFX\0\0\0\0WAVE", b"RIFF\0\0\0\0AVI ", b"RIFF\0\0", b"RIFF\0\0\0\0WAVEfmt "],
)
def test_what_is_no_complete_wav_header_declares_nothing(tmp_path, head):
    path = tmp_path / "w"
    path.write_bytes(head)
    assert wav_claim(path) is None


def test_a_caf_written_live_declares_nothing_and_is_read_to_its_end(tmp_path):
    data = bytearray(samples.audio("caf", 1.0))
    at = data.index(b"data")
    data[at + 4 : at + 12] = struct.pack(">q", -1)
    path = tmp_path / "live.caf"
    path.write_bytes(bytes(data))
    assert caf_claim(path) is None
    assert derived(tmp_path, bytes(data)).properties["duration"] == 1.0


def test_a_compressed_caf_declares_its_length_in_its_packet_table(tmp_path, ffmpeg):
    data = ffmpeg_encode(ffmpeg, tmp_path, samples.wav(1.0), ["-c:a", "alac", "-f", "caf"])
    assert b"pakt" in data
    path = tmp_path / "alac.caf"
    path.write_bytes(data)
    # FFmpeg counts whole packets of 4096 frames as valid; the last one holds fewer
    assert caf_claim(path) == 12 * 4096 / 48_000
    result = derived(tmp_path, data)
    assert result.properties["codec"] == "alac" and "opus" in variants(result)
    assert result.properties["duration"] == 1.0


def _page(payload: bytes, *, first=False) -> bytes:
    lacing = [255] * (len(payload) // 255) + [len(payload) % 255]
    header = b"OggS\0" + bytes([2 if first else 0]) + b"\0" * 20
    return header + bytes([len(lacing), *lacing]) + payload


@pytest.mark.parametrize(
    "data, cut",
    [
        (_page(b"x" * 300, first=True) + _page(b"y" * 10), False),
        ((_page(b"x" * 300, first=True) + _page(b"y" * 10))[:-1], True),  # in the payload
        (_page(b"x" * 300, first=True)[:28], True),  # in the segment table
        (_page(b"x" * 300, first=True)[:20], True),  # in the header
        (_page(b"x" * 10, first=True) + b"TAG" + b"\0" * 125, True),  # junk: no page
    ],
)
def test_an_ogg_cut_inside_a_page_is_found(tmp_path, data, cut):
    path = tmp_path / "o.ogg"
    path.write_bytes(data)
    assert ogg_cut(path) is cut


@pytest.mark.parametrize(
    "data, found",
    [
        (b"\xff\xfb\x90\x44" + b"\0" * 32 + b"Xing" + b"\0" * 100, True),
        (b"\xff\xfb\x90\x44" + b"\0" * 32 + b"Info" + b"\0" * 100, True),
        (b"\xff\xfb\x90\x44" + b"\0" * 32 + b"VBRI" + b"\0" * 100, True),
        (b"\xff\xfb\x90\x44" + b"\0" * 200 + b"Xing", False),  # past the first frame's start
        (
            b"ID3\x04\x00\x00\x00\x00\x00\x0a" + b"\0" * 10 + b"\xff\xfb" + b"\0" * 32 + b"Info",
            True,
        ),
        (b"ID3\x04\x00\x10\x00\x00\x01\x00" + b"\0" * 128 + b"\0" * 10 + b"Xing", True),
        (b"ID3\x04\x00\x00\x00\x00\x01\x00" + b"Xing" + b"\0" * 200, False),  # in the tag
        (b"\xff\xfb\x90\x44" + b"\0" * 300, False),
    ],
)
def test_an_mp3s_length_frame_is_looked_for_after_its_tag(tmp_path, data, found):
    path = tmp_path / "a.mp3"
    path.write_bytes(data)
    assert mp3_has_length_frame(path) is found


def test_a_file_typed_as_audio_without_an_audio_stream_is_undecodable(tmp_path):
    with pytest.raises(Undecodable, match=r"^The file has no audio stream\.$"):
        derived(tmp_path, samples.mp4(1), "audio/aiff")


def test_wavpack_is_lossless_and_gets_an_opus_copy(tmp_path):
    data = samples.encode(samples.wav(1.0), "wv", "wavpack")
    result = derived(tmp_path, data, "audio/x-wavpack")
    assert result.properties["codec"] == "wavpack" and result.properties["lossless"] is True
    check_opus(result, seconds=1.0, channels=2, bit_rate=96_000)


@pytest.mark.parametrize(
    "stream_rate, container_rate, expected",
    [(128_000, 131_000, 128_000), (None, 131_000, 131_000), (None, None, 100_000), (0, 0, 100_000)],
)
def test_the_bit_rate_is_the_streams_else_the_containers_else_the_files_average(
    stream_rate, container_rate, expected
):
    from types import SimpleNamespace

    from gateway.processing.audio import _bit_rate

    stream = SimpleNamespace(codec_context=SimpleNamespace(bit_rate=stream_rate))
    container = SimpleNamespace(bit_rate=container_rate)
    assert _bit_rate(stream, container, 25_000, 2.0) == expected


def _two_streams(ffmpeg: str, tmp_path) -> bytes:
    """A Matroska file of two audio streams: 1 s, then 3 s (its Segment's duration)."""
    source = tmp_path / "source.wav"
    source.write_bytes(samples.wav(1.0))
    path = tmp_path / "two.mka"
    subprocess.run(
        [ffmpeg, "-v", "error", "-i", str(source), "-i", str(source), "-filter_complex",
         "[1]apad=pad_dur=2[b]", "-map", "0", "-map", "[b]", "-c:a", "pcm_s16le",
         "-f", "matroska", str(path)],
        check=True,
    )  # fmt: skip
    return path.read_bytes()


def test_the_demuxed_length_is_the_first_streams_alone(tmp_path, ffmpeg):
    """A second, longer audio stream is not the first one's length."""
    from gateway.processing.audio import _demuxed_seconds

    path = tmp_path / "a.mka"
    path.write_bytes(_two_streams(ffmpeg, tmp_path))
    assert _demuxed_seconds(path) == pytest.approx(1.0, abs=0.025)


def test_a_matroska_of_two_streams_is_the_first_stream_and_claims_nothing(tmp_path, ffmpeg):
    """Its Segment's 3 s are the longer stream's: no claim for the first, which is decoded
    alone (not refused as truncated, not counted with the second)."""
    data = _two_streams(ffmpeg, tmp_path)
    assert _claim(tmp_path / "a.mka", data) is None
    result = derived(tmp_path, data, "audio/x-matroska")
    assert result.properties["duration"] == 1.0 and result.properties["channels"] == 2


@pytest.mark.parametrize(
    "packets, time_base, expected",
    [
        ([(None, 7), (10, None), (4, 2)], Fraction(1, 1000), Fraction(6, 1000)),
        ([(-5, 5)], Fraction(1, 1000), Fraction(5, 1000)),  # ends at 0
        ([(0, 0), (3, 0)], Fraction(1, 1000), Fraction(3, 1000)),
        ([(None, 7)], Fraction(1, 1000), None),
        ([(0, 5)], None, None),
    ],
)
def test_the_demuxed_length_runs_from_the_first_timestamp_to_the_last_packets_end(
    monkeypatch, tmp_path, packets, time_base, expected
):
    """Packets without a timestamp are skipped, one without a duration ends where it starts,
    and a stream that starts before 0 counts from there. A fake container: no demuxer FFmpeg
    has leaves a duration or the time base unset."""
    from types import SimpleNamespace

    from gateway.processing import audio

    stream = SimpleNamespace(time_base=time_base)

    class Container:
        streams = SimpleNamespace(audio=[stream])

        def __enter__(self):
            return self

        def __exit__(self, *_):
            return False

        def demux(self, which):
            assert which is stream
            return iter(SimpleNamespace(pts=pts, duration=duration) for pts, duration in packets)

    monkeypatch.setattr(av, "open", lambda _: Container())
    seconds = audio._demuxed_seconds(tmp_path / "unread")
    assert seconds == (None if expected is None else float(expected))


def test_a_flac_streams_bit_rate_is_the_containers(tmp_path):
    result = derived(tmp_path, samples.audio("flac", 1.0))
    assert 0 < result.properties["bitRate"] < 1_536_000


def _riff(*chunks: tuple[bytes, bytes], kind=b"RIFF") -> bytes:
    body = b"".join(name + struct.pack("<I", len(data)) + data for name, data in chunks)
    return kind + b"\0\0\0\0WAVE" + body


@pytest.mark.parametrize(
    "data, expected",
    [
        # the oldest fmt (WAVEFORMAT, 14 bytes): rate 8000, block 2
        (_riff((b"fmt ", struct.pack("<HHIIH", 1, 1, 8000, 16000, 2)), (b"data", b"")), None),
        (
            _riff((b"fmt ", struct.pack("<HHIIH", 1, 1, 8000, 16000, 2)))
            + b"data"
            + struct.pack("<I", 32000),
            2.0,
        ),
        (
            _riff((b"fmt ", struct.pack("<HHIH", 1, 1, 8000, 2)))
            + b"data"
            + struct.pack("<I", 32000),
            None,
        ),
        # RF64 with the shortest ds64 that holds the data size
        (
            _riff(
                (b"ds64", struct.pack("<QQ", 0, 48_000)),
                (b"fmt ", struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)),
                kind=b"RF64",
            )
            + b"data\xff\xff\xff\xff",
            3.0,
        ),
        (
            _riff(
                (b"ds64", struct.pack("<QI", 0, 48_000)),
                (b"fmt ", struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)),
                kind=b"RF64",
            )
            + b"data\xff\xff\xff\xff",
            None,
        ),
    ],
)
def test_wav_headers_of_every_vintage(tmp_path, data, expected):
    path = tmp_path / "w.wav"
    path.write_bytes(data)
    assert wav_claim(path) == expected


def _fmt(rate: int = 8000, block: int = 2) -> tuple[bytes, bytes]:
    return b"fmt ", struct.pack("<HHIIHH", 1, 1, rate, rate * block % 2**32, block, 16)


def _data(size: int) -> bytes:
    """A data chunk's header alone, declaring ``size`` bytes."""
    return b"data" + struct.pack("<I", size)


@pytest.mark.parametrize(
    "data, expected",
    [
        (_riff(_fmt()) + _data(16001), 1.0),  # whole frames only
        # chunks that would declare a second, after a head that is not a WAV's
        (b"RIFX" + _riff(_fmt())[4:] + _data(16000), None),
        (_riff(_fmt())[:8] + b"AVI " + _riff(_fmt())[12:] + _data(16000), None),
        (_riff(_fmt(block=0)) + _data(16000), None),
        (_riff(_fmt(rate=0)) + _data(16000), None),
        # every field read whole, unsigned
        (_riff(_fmt(rate=2**31)) + _data(4), 2 / 2**31),
        (_riff(_fmt(block=0x8000)) + _data(0x10000), 2 / 8000),
        (
            _riff((b"ds64", struct.pack("<QQ", 0, 2**63)), _fmt(), kind=b"RF64")
            + b"data\xff\xff\xff\xff",
            2**62 / 8000,
        ),
        # an RF64 data chunk that gives its size is read for it, not for the ds64's
        (_riff((b"ds64", struct.pack("<QQ", 0, 48_000)), _fmt(), kind=b"RF64") + _data(16000), 1.0),
        # a ds64 counts in RF64 and BW64 only: a RIFF's data of unknown size stays unknown
        (_riff((b"ds64", struct.pack("<QQ", 0, 48_000)), _fmt()) + b"data\xff\xff\xff\xff", None),
        # the data chunk as the 64th chunk is found; as the 65th, it is beyond the search
        (_riff(_fmt(), *[(b"junk", b"")] * 62) + _data(16000), 1.0),
        (_riff(_fmt(), *[(b"junk", b"")] * 63) + _data(16000), None),
    ],
)
def test_wav_header_fields_and_edges(tmp_path, data, expected):
    path = tmp_path / "w.wav"
    path.write_bytes(data)
    assert wav_claim(path) == expected


def _caf(*chunks: tuple[bytes, bytes]) -> bytes:
    return b"caff\x00\x01\x00\x00" + b"".join(
        name + struct.pack(">q", len(data)) + data for name, data in chunks
    )


def _chunk(name: bytes, size: int) -> bytes:
    """A chunk's header alone, declaring ``size`` bytes that the file does not hold."""
    return name + struct.pack(">q", size)


def _desc(packet_bytes: int, packet_frames: int) -> bytes:
    """An lpcm desc at 8 kHz, mono, with packets of these bytes and frames."""
    return struct.pack(">dIIIIII", 8000.0, 0x6C70636D, 0, packet_bytes, packet_frames, 1, 16)


DESC = _desc(2, 1)  # 2 bytes a frame


@pytest.mark.parametrize(
    "data, expected",
    [
        (_caf((b"desc", DESC), (b"data", b"\0" * 4 + b"\0" * 16000)), 1.0),
        (_caf((b"desc", DESC), (b"data", b"\0" * 4)), 0.0),
        (_caf((b"desc", DESC), (b"data", b"\0" * 3)), None),
        (
            _caf((b"desc", DESC), (b"pakt", struct.pack(">qq", 1, 24_000)), (b"data", b"\0" * 4)),
            3.0,
        ),
        (
            _caf((b"desc", DESC), (b"pakt", struct.pack(">qi", 1, 24_000)), (b"data", b"\0" * 4)),
            0.0,
        ),
        (_caf((b"desc", DESC[:31]), (b"data", b"\0" * 20)), None),
        (_caf((b"data", b"\0" * 20)), None),
        (b"RIFF\0\0\0\0", None),
        (_caf((b"pakt", struct.pack(">qq", 1, 24_000)), (b"data", b"\0" * 4)), None),  # no rate
        (_caf((b"desc", DESC)), None),  # no data chunk
        (_caf((b"desc", DESC), (b"free", b""), (b"data", b"\0" * 16004)), 1.0),  # an empty chunk
        (_caf((b"desc", DESC), (b"data", b"\0" * 16005)), 1.0),  # whole packets only
        (_caf((b"desc", _desc(4, 2)), (b"data", b"\0" * 16004)), 1.0),  # 4000 packets of 2 frames
        (_caf((b"desc", _desc(0, 1024)), (b"data", b"\0" * 16004)), None),  # packets of any size
        (_caf((b"desc", _desc(2, 0)), (b"data", b"\0" * 16004)), None),  # of any length
        # sizes and counts that need every byte of their field
        (_caf((b"desc", DESC)) + _chunk(b"data", 2**56 + 4), 2**55 / 8000),
        (_caf((b"desc", _desc(2**24 + 2, 1))) + _chunk(b"data", 4 + 2 * (2**24 + 2)), 2 / 8000),
        (_caf((b"desc", _desc(2, 2**24 + 1)), (b"data", b"\0" * 6)), (2**24 + 1) / 8000),
        (_caf((b"desc", DESC), (b"pakt", struct.pack(">qq", 1, 2**56))), 2**56 / 8000),
        # a chunk past what a file system can address ends the search, as does a partial header
        (_caf((b"desc", DESC), (b"data", b"\0" * 16004)) + _chunk(b"free", 2**60), 1.0),
        (_caf((b"desc", DESC), (b"data", b"\0" * 16004)) + _chunk(b"data", 16)[:11], 1.0),
        # a count of valid frames is signed: below zero it is none
        (_caf((b"desc", DESC), (b"pakt", struct.pack(">qq", 1, 0)), (b"data", b"\0" * 8)), 0.0),
        (_caf((b"desc", DESC), (b"pakt", struct.pack(">qq", 1, -1)), (b"data", b"\0" * 8)), None),
    ],
)
def test_caf_headers(tmp_path, data, expected):
    path = tmp_path / "c.caf"
    path.write_bytes(data)
    assert caf_claim(path) == expected


def test_a_caf_with_a_chunk_claiming_exabytes_after_its_audio_is_described(tmp_path):
    data = samples.audio("caf", 0.5) + _chunk(b"free", 2**60)
    assert derived(tmp_path, data).properties["duration"] == 0.5


@pytest.mark.parametrize("free, expected", [(62, 1.0), (63, None)])
def test_a_cafs_chunks_are_read_to_the_64th(tmp_path, free, expected):
    """The data chunk as the 64th chunk is read; as the 65th, it is beyond the search."""
    data = _caf((b"desc", DESC), *[(b"free", b"")] * free, (b"data", b"\0" * 16004))
    path = tmp_path / "c.caf"
    path.write_bytes(data)
    assert caf_claim(path) == expected


@pytest.mark.parametrize("at, found", [(188, True), (189, False)])
def test_the_length_frame_is_looked_for_in_the_first_frames_192_bytes(tmp_path, at, found):
    path = tmp_path / "a.mp3"
    path.write_bytes(b"\xff\xfb\x90\x44" + b"\0" * (at - 4) + b"Xing" + b"\0" * 100)
    assert mp3_has_length_frame(path) is found


def _id3(flags: int, size: bytes) -> bytes:
    """An ID3v2.4 tag of ``size`` (four syncsafe bytes), with its footer if ``flags`` say so."""
    body = size[0] << 21 | size[1] << 14 | size[2] << 7 | size[3]
    footer = b"3DI\x04\x00" + bytes([flags]) + size if flags & 0x10 else b""
    return b"ID3\x04\x00" + bytes([flags]) + size + b"\0" * body + footer


@pytest.mark.parametrize(
    "flags, size",
    [
        (0x00, b"\x01\x02\x03\x04"),  # 2130308 bytes: every byte of the size counts
        (0x10, b"\x00\x00\x01\x00"),  # a footer after the tag
        (0xEF, b"\x00\x00\x01\x00"),  # every flag but the footer's
    ],
)
@pytest.mark.parametrize("at, found", [(0, True), (188, True), (189, False), (-4, False)])
def test_the_length_frame_is_looked_for_right_after_the_tag(tmp_path, flags, size, at, found):
    """The 192 bytes after the tag (and its footer) exactly: not one before, not one after."""
    tag = _id3(flags, size)
    frame = b"\xff\xfb\x90\x44" + b"\0" * 300
    data = bytearray(tag + frame)
    data[len(tag) + at : len(tag) + at + 4] = b"Xing"
    path = tmp_path / "a.mp3"
    path.write_bytes(bytes(data))
    assert mp3_has_length_frame(path) is found
