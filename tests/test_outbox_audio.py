"""Advice for audio in the offline client: what Ogg Opus would save, measured by encoding (PyAV),
the recommendation and its reason, and ``push --optimize`` queueing the Opus copy.

The audio is made here: a sine (with a little noise where a lossless codec must not shrink it
to nothing) written with ``wave``, encoded to MP3 and FLAC with PyAV. Nothing is downloaded."""

from __future__ import annotations

import array
import io
import json
import math
import os
import random
import subprocess
import sys
import threading
import wave
from pathlib import Path
from types import SimpleNamespace

import av
import pytest
from click.testing import CliRunner
from media_samples import mp4
from PIL import Image, ImageCms
from werkzeug.serving import make_server

from gateway import create_app
from gateway.http.auth import mint_token
from outbox import advise
from outbox.cli import main

from conftest import init_stores, make_settings
from support import ROOT, png_bytes

RATE = 48_000
CD_RATE = 44_100  # the MP3's: the encoder resamples it to Opus's 48 kHz
SECONDS = 4
FRAME = 960 / RATE  # an Opus frame: 20 ms


def sine_wav(
    path: Path, *, seconds=SECONDS, channels=1, noise=0.0, title="", amplitude=0.5
) -> Path:
    """16-bit PCM at 48 kHz: 440 Hz at ``amplitude``, plus ``noise`` (fractions of full scale)."""
    rng = random.Random(7)
    samples = array.array("h")
    for i in range(seconds * RATE):
        value = amplitude * math.sin(2 * math.pi * 440 * i / RATE)
        for _ in range(channels):
            samples.append(round(32767 * max(-1.0, min(1.0, value + rng.uniform(-noise, noise)))))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(samples.tobytes())
    if title:  # a LIST/INFO chunk after the data, as recorders write one
        info = b"INFO" + b"INAM" + (len(title) + 1).to_bytes(4, "little") + title.encode() + b"\0"
        info += b"\0" * (len(info) % 2)
        with path.open("r+b") as f:
            f.seek(0, 2)
            f.write(b"LIST" + len(info).to_bytes(4, "little") + info)
            size = f.tell()
            f.seek(4)
            f.write((size - 8).to_bytes(4, "little"))
    return path


def encoded(source: Path, target, codec: str, container: str, bit_rate=0, rate=RATE):
    """``source`` re-encoded by PyAV (MP3 through libmp3lame, FLAC) into ``target``, a path or
    a file."""
    into = str(target) if isinstance(target, Path) else target
    with av.open(str(source)) as inp, av.open(into, "w", format=container) as out:
        audio = inp.streams.audio[0]
        layout = "mono" if audio.channels == 1 else "stereo"
        stream = out.add_stream(codec, rate=rate, layout=layout)
        if bit_rate:
            stream.bit_rate = bit_rate
        for frame in inp.decode(audio):
            frame.pts = None
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return target


def with_cover(source: Path, target: Path) -> Path:
    """``source`` (MP3) with a cover picture: a video stream marked ``attached_pic``."""
    cover = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(cover, "PNG")
    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        audio = out.add_stream_from_template(inp.streams.audio[0])
        picture = out.add_stream("png")
        picture.width, picture.height, picture.pix_fmt = 64, 64, "rgb24"
        picture.disposition = av.stream.Disposition.attached_pic
        packet = av.Packet(cover.getvalue())
        packet.stream, packet.pts, packet.dts = picture, 0, 0
        out.mux(packet)
        for packet in inp.demux(inp.streams.audio[0]):
            if packet.dts is not None:
                packet.stream = audio
                out.mux(packet)
    return target


def opus_file(path: Path) -> tuple[str, str, int, float, dict]:
    """(container, codec, channels, duration in seconds, tags) of an Ogg Opus file, decoded."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return (container.format.name, stream.codec_context.codec.canonical_name,
                stream.channels, samples / RATE, dict(stream.metadata))  # fmt: skip


class Ticks:
    """A clock that moves one second per reading: an encoding takes exactly 1 s by it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    wav = sine_wav(root / "rec.wav", title="North wall")
    noisy = sine_wav(root / "noisy.wav", channels=2, noise=0.05)
    return {
        "wav": wav,
        "mp3": encoded(wav, root / "rec.mp3", "libmp3lame", "mp3", 128_000, rate=CD_RATE),
        "flac": encoded(noisy, root / "rec.flac", "flac", "flac"),
    }


SMALL = advise.AudioOptions(min_size=100_000)  # the samples are a few hundred KB


# -- the rules ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "bits"),
    [
        ("256kbit", 256_000), ("1Mbit", 1_000_000), ("10Mbit", 10_000_000), ("10Mbit/s", 10**7),
        ("64k", 64_000), ("96000", 96_000), ("1.5Mbps", 1_500_000), (" 2 Gbit ", 2 * 10**9),
        ("96 kbits/s", 96_000), ("512KBIT", 512_000), ("0.5k", 500), ("1bit", 1),
    ],
)  # fmt: skip
def test_bit_rates_are_read_with_their_units(text, bits):
    assert advise.parse_bitrate(text) == bits


@pytest.mark.parametrize(
    "text", ["", "1MB", "1MB/s", "0", "0kbit", "0.0004k", "k", "-5k", "1.5.2k", "fast", "1 Mbit/h"]
)
def test_anything_else_is_not_a_bit_rate(text):
    with pytest.raises(ValueError, match="is not a bit rate") as raised:
        advise.parse_bitrate(text)
    assert repr(text) in str(raised.value)


def test_a_zero_bit_rate_is_refused_as_such():
    with pytest.raises(ValueError, match=r"^'0kbit' is not a bit rate above zero$"):
        advise.parse_bitrate("0kbit")
    with pytest.raises(ValueError, match=r"^'1MB' is not a bit rate \(e\.g\. 96000, 64k, 256kbit"):
        advise.parse_bitrate("1MB")


def test_the_opus_bit_rate_follows_the_channels_unless_chosen():
    assert [advise.opus_bitrate(n) for n in (1, 2, 3, 6)] == [64_000, 96_000, 144_000, 288_000]
    assert advise.opus_bitrate(2, 32_000) == advise.opus_bitrate(1, 32_000) == 32_000


@pytest.mark.parametrize(
    ("codec", "compressed"),
    [("pcm_s16le", False), ("pcm_f32be", False), ("pcm_s24le", False), ("flac", False),
     ("alac", False), ("wavpack", False), ("mp3", True), ("aac", True), ("opus", True),
     ("vorbis", True), ("amr_nb", True), ("pcm", True), ("xpcm_s16le", True)],
)  # fmt: skip
def test_lossy_codecs_count_as_compressed(codec, compressed):
    assert advise.is_compressed(codec) is compressed


def test_the_audio_recommendation_and_its_reason_at_each_limit():
    mib = 1024 * 1024
    assert mib == advise.AUDIO_MIN_SIZE and advise.MIN_SAVING == 0.10
    rule = advise.recommend_audio
    assert rule("mp3", 10 * mib, 0.9, mib) == (False, "already compressed (mp3)")
    assert rule("pcm_s16le", mib - 1, 0.9, mib) == (
        False, f"under the threshold ({mib - 1} < {mib} bytes)")  # fmt: skip
    assert rule("pcm_s16le", mib, 0.9, mib) == (True, "uncompressed (pcm_s16le); opus saves 90%")
    assert rule("flac", mib, 0.10, mib) == (True, "lossless (flac); opus saves 10%")
    assert rule("flac", mib, 0.0999, mib) == (False, "opus saves 10%, under 10%")
    assert rule("flac", mib, -0.5, mib) == (False, "opus saves -50%, under 10%")


def test_the_image_recommendation_and_its_reason_at_its_limit():
    def best(format_, saving):  # an encoding saving exactly this much
        return SimpleNamespace(format=format_, saving=saving)

    assert advise.recommend_image(best("webp", 0.10)) == (True, "webp saves 10%")
    assert advise.recommend_image(best("avif", 0.0999)) == (False, "avif saves 10%, under 10%")
    assert advise.recommend_image(best("webp", 0.9)) == (True, "webp saves 90%")


def test_the_transfer_time_saved_is_the_bytes_saved_at_the_uplink_rate():
    encoding = advise.Encoding("opus", 125_000, 1_125_000, bitrate=64_000)
    assert encoding.transfer_seconds_saved(1_000_000) == 8.0
    assert encoding.transfer_seconds_saved(256_000) == 31.25
    assert advise.Encoding("opus", 200, 100).transfer_seconds_saved(800) == -1.0
    assert encoding.saving == pytest.approx(1 - 125 / 1125)
    assert advise.Encoding("opus", 10, 0).saving == 0.0


# -- measured ---------------------------------------------------------------------------------------
def test_a_wav_is_measured_whole_and_advised_to_opus(samples):
    path = samples["wav"]
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    found = advise.advise(path, audio=SMALL, clock=Ticks())
    assert found is not None and found.kind == "audio"
    assert found.original_size == len(before) == 44 + SECONDS * RATE * 2 + 32  # header, data, LIST
    assert found.audio == advise.AudioInfo("wav", "pcm_s16le", RATE, 1, SECONDS, SECONDS)
    (opus,) = found.encodings
    assert (opus.format, opus.bitrate, opus.quality, opus.estimated) == (
        "opus",
        64_000,
        None,
        False,
    )
    assert opus.seconds == 1.0  # one tick of the clock: the encoding was timed once
    nominal = 64_000 * SECONDS / 8
    assert 0.5 * nominal < opus.size < 1.5 * nominal
    assert opus.original_size == len(before)
    assert found.reencode is True
    assert found.reason == f"uncompressed (pcm_s16le); opus saves {opus.saving:.0%}"
    assert opus.saving > 0.8
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime


def test_under_the_default_threshold_a_wav_is_measured_but_left_alone(samples):
    found = advise.advise(samples["wav"])
    assert found is not None and found.encodings[0].size > 0
    size = samples["wav"].stat().st_size
    assert (found.reencode, found.reason) == (
        False, f"under the threshold ({size} < {1024 * 1024} bytes)")  # fmt: skip


def test_an_mp3_is_already_compressed(samples):
    found = advise.advise(samples["mp3"], audio=SMALL)
    assert found is not None and found.audio is not None
    assert (found.reencode, found.reason) == (False, "already compressed (mp3)")
    assert (found.audio.container, found.audio.codec) == ("mp3", "mp3")
    assert (found.audio.sample_rate, found.audio.channels) == (CD_RATE, 1)
    assert abs(found.audio.duration - SECONDS) <= 1152 / CD_RATE  # one MP3 frame
    assert found.original_size == samples["mp3"].stat().st_size
    assert 0 < found.encodings[0].size < 1.5 * 64_000 * SECONDS / 8


def test_a_flac_is_lossless_and_advised_to_opus_at_the_stereo_rate(samples):
    found = advise.advise(samples["flac"], audio=SMALL)
    assert found is not None and found.audio is not None
    assert found.audio == advise.AudioInfo("flac", "flac", RATE, 2, SECONDS, SECONDS)
    (opus,) = found.encodings
    assert opus.bitrate == 96_000
    assert 0.5 * 96_000 * SECONDS / 8 < opus.size < 1.5 * 96_000 * SECONDS / 8
    assert found.reencode is True
    assert found.reason == f"lossless (flac); opus saves {opus.saving:.0%}"


def test_the_chosen_bit_rate_is_the_one_encoded(samples):
    sizes = {}
    for bits in (24_000, 128_000):
        found = advise.advise(samples["flac"], audio=advise.AudioOptions(bitrate=bits))
        assert found is not None and found.encodings[0].bitrate == bits
        sizes[bits] = found.encodings[0].size
    assert 0.5 < sizes[24_000] / (24_000 * SECONDS / 8) < 1.5
    assert 0.5 < sizes[128_000] / (128_000 * SECONDS / 8) < 1.5


def test_a_long_recording_is_measured_on_a_prefix_and_extrapolated(samples):
    whole = advise.advise(samples["wav"], audio=SMALL)
    options = advise.AudioOptions(min_size=100_000, measure_seconds=1.0)
    found = advise.advise(samples["wav"], audio=options, clock=Ticks())
    assert whole is not None and found is not None and found.audio is not None
    measured = found.audio.measured_seconds
    assert 1.0 <= measured < 1.1  # decoding stops at the packet that reaches a second
    assert found.audio.duration == SECONDS  # the header's
    (opus,) = found.encodings
    assert opus.estimated is True
    assert opus.seconds == pytest.approx(SECONDS / measured)  # 1 s for the prefix, scaled
    assert opus.size == pytest.approx(whole.encodings[0].size, rel=0.1)
    assert found.reencode is True
    # Decoding stops at the first packet that reaches the limit (WAV packets: 4096 samples).
    twelve = advise.AudioOptions(min_size=100_000, measure_seconds=12 * 4096 / RATE)
    at_packet = advise.advise(samples["wav"], audio=twelve)
    assert at_packet is not None and at_packet.audio is not None
    assert at_packet.audio.measured_seconds == 12 * 4096 / RATE
    # As long as the limit, or shorter: measured whole.
    exact = advise.AudioOptions(min_size=100_000, measure_seconds=SECONDS)
    at_limit = advise.advise(samples["wav"], audio=exact)
    assert at_limit is not None and at_limit.encodings[0].estimated is False
    assert at_limit.encodings[0].size == whole.encodings[0].size


class Unseekable:
    """A file that can only be appended to: a muxer writes no duration into it."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("wb")

    def write(self, data: bytes) -> int:
        return self.file.write(data)


def test_a_recording_without_a_duration_is_measured_whole(samples, tmp_path):
    """As MediaRecorder's WebM: written as it was recorded, with no duration in its header."""
    path = tmp_path / "browser.webm"
    sink = Unseekable(path)
    encoded(samples["wav"], sink, "libopus", "webm")
    sink.file.close()
    with av.open(str(path)) as container:
        assert container.duration is None
    options = advise.AudioOptions(min_size=1, measure_seconds=1.0)
    found = advise.advise(path, audio=options)
    assert found is not None and found.audio is not None
    assert found.audio.codec == "opus" and found.audio.container == "matroska,webm"
    assert found.encodings[0].estimated is False
    assert abs(found.audio.duration - SECONDS) <= FRAME
    assert found.audio.duration == found.audio.measured_seconds
    assert found.reason == "already compressed (opus)"


def test_a_cut_mp3_is_measured_as_it_is_not_as_its_header_says(samples, tmp_path):
    path = tmp_path / "cut.mp3"
    data = samples["mp3"].read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with av.open(str(path)) as container:
        assert container.duration == SECONDS * 1_000_000  # the Xing header's frame count
    found = advise.advise(path, audio=advise.AudioOptions(min_size=1))
    assert found is not None and found.audio is not None
    assert abs(found.audio.duration - SECONDS / 2) <= 1152 / CD_RATE
    assert found.audio.duration == found.audio.measured_seconds
    assert found.encodings[0].estimated is False
    assert found.original_size == len(data) // 2


def test_a_damaged_file_gets_no_advice_and_no_copy(samples, tmp_path):
    path = tmp_path / "cut.flac"
    data = samples["flac"].read_bytes()
    path.write_bytes(data[: len(data) // 2])  # ends inside a frame: the decoder refuses it
    assert advise.advise(path, audio=SMALL) is None
    out = tmp_path / "out"
    out.mkdir()
    assert advise.optimize(path, out, audio=SMALL) is None
    assert list(out.iterdir()) == []  # the half-written copy is removed
    assert path.read_bytes() == data[: len(data) // 2]


def test_a_recording_without_a_single_sample_gets_no_advice_and_no_copy(tmp_path):
    path = tmp_path / "empty.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(b"")
    assert path.stat().st_size == 44
    assert advise.advise(path, audio=advise.AudioOptions(min_size=1)) is None
    target = tmp_path / "out"
    target.mkdir()
    assert advise.optimize(path, target, audio=advise.AudioOptions(min_size=1)) is None
    assert list(target.iterdir()) == []


def test_a_cover_picture_does_not_make_audio_a_video(samples, tmp_path):
    found = advise.advise(with_cover(samples["mp3"], tmp_path / "cover.mp3"), audio=SMALL)
    assert found is not None and found.kind == "audio"
    assert found.reason == "already compressed (mp3)"


def video_with_sound(wav: Path) -> bytes:
    """An MP4 with a video track and ``wav``'s sound in AAC."""
    out = io.BytesIO()
    with av.open(str(wav)) as inp, av.open(out, "w", format="mp4") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        sound = container.add_stream("aac", rate=RATE, layout="mono")
        for i in range(SECONDS * 10):
            frame = av.VideoFrame.from_image(Image.new("RGB", (64, 48), (i * 8 % 256, 90, 40)))
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        for frame in inp.decode(inp.streams.audio[0]):
            frame.pts = None
            container.mux(sound.encode(frame))
        container.mux(sound.encode(None))
    return out.getvalue()


def test_video_text_and_noise_get_no_advice(samples, tmp_path):
    for name, data in (
        ("clip.mp4", mp4(seconds=1)),
        ("talk.mp4", video_with_sound(samples["wav"])),
        ("notes.txt", b"north wall, second visit\n" * 100),
        ("captions.srt", b"1\n00:00:00,000 --> 00:00:02,000\nNorth wall\n\n"),  # subtitles only
        ("noise.wav", random.Random(3).randbytes(50_000)),
        ("x.png", png_bytes()),  # a PNG signature over filler: not decodable either
    ):
        path = tmp_path / name
        path.write_bytes(data)
        assert advise.advise(path) is None, name
        assert advise.optimize(path, tmp_path / "out") is None, name


def test_images_are_timed_and_advised_too(tmp_path):
    path = tmp_path / "m.png"
    Image.effect_mandelbrot((320, 240), (-2, -1.2, 1, 1.2), 60).convert("RGB").save(path)
    found = advise.advise(path, clock=Ticks())
    assert found is not None and found.kind == "image" and found.audio is None
    assert [e.seconds for e in found.encodings] == [1.0, 1.0]
    assert {e.quality for e in found.encodings} == {80, 60}
    assert found.reencode is True
    assert found.reason == f"{found.encodings[0].format} saves {found.encodings[0].saving:.0%}"


def test_image_encodings_keep_exif_and_icc_and_follow_the_quality(tmp_path):
    path = tmp_path / "cam.jpg"
    exif = Image.Exif()
    exif[0x010F], exif[0x0112] = "Acme", 6  # the camera, and "rotate 90° to view"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    fractal = Image.effect_mandelbrot((800, 600), (-2, -1.2, 1, 1.2), 60).convert("RGB")
    fractal.save(path, "JPEG", quality=90, exif=exif, icc_profile=icc)
    low = advise.advise(path, quality={"webp": 10})
    high = advise.advise(path, quality={"webp": 95})
    assert low is not None and high is not None
    assert [(e.format, e.quality) for e in low.encodings] == [("webp", 10)]
    assert low.encodings[0].size < high.encodings[0].size
    smaller = advise.optimize(path, tmp_path / "out", quality={"webp": 60}) if (
        (tmp_path / "out").mkdir() is None) else None  # fmt: skip
    assert smaller == tmp_path / "out" / "cam.webp"
    with Image.open(smaller) as copy:
        assert copy.size == (600, 800)  # rotated upright
        assert copy.getexif()[0x010F] == "Acme"
        assert copy.info.get("icc_profile") == icc


def test_images_in_other_modes_are_converted_and_no_exif_is_made_up(tmp_path):
    fractal = Image.effect_mandelbrot((320, 240), (-2, -1.2, 1, 1.2), 60).convert("RGB")
    fractal.convert("CMYK").save(tmp_path / "print.jpg")  # WebP and AVIF take no CMYK
    found = advise.advise(tmp_path / "print.jpg")
    assert found is not None and found.kind == "image" and len(found.encodings) == 2
    fractal.save(tmp_path / "plain.png")
    (tmp_path / "out").mkdir()
    smaller = advise.optimize(tmp_path / "plain.png", tmp_path / "out")
    assert smaller is not None
    with Image.open(smaller) as copy:
        assert "exif" not in copy.info and "icc_profile" not in copy.info


# -- the smaller copy -------------------------------------------------------------------------------
def test_optimize_writes_the_whole_recording_as_ogg_opus_with_its_tags(samples, tmp_path):
    path = samples["wav"]
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    smaller = advise.optimize(path, tmp_path, audio=SMALL)
    assert smaller == tmp_path / "rec.opus"
    container, codec, channels, duration, tags = opus_file(smaller)
    assert (container, codec, channels) == ("ogg", "opus", 1)
    assert abs(duration - SECONDS) <= FRAME
    assert tags.get("title") == "North wall"
    assert smaller.stat().st_size < len(before) * (1 - advise.MIN_SAVING)
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    # What advise measured, counting the bytes as they were written, is this file's size.
    measured = advise.advise(path, audio=SMALL)
    assert measured is not None and measured.encodings[0].size == smaller.stat().st_size


def test_optimize_leaves_compressed_small_or_unshrinkable_audio_alone(samples, tmp_path):
    assert advise.optimize(samples["mp3"], tmp_path, audio=SMALL) is None
    assert advise.optimize(samples["wav"], tmp_path) is None  # under the default 1 MiB
    # A voice recorder's 8 kHz 8-bit PCM is 64 kb/s: Opus at 64 kb/s is larger. Encoded, dropped.
    phone = tmp_path / "phone.wav"
    with wave.open(str(phone), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(8000)
        rng = random.Random(1)
        out.writeframes(bytes(
            128 + round(100 * math.sin(2 * math.pi * 440 * i / 8000) + rng.uniform(-20, 20))
            for i in range(8000 * SECONDS)))  # fmt: skip
    found = advise.advise(phone, audio=advise.AudioOptions(min_size=1))
    assert found is not None and found.audio is not None and found.audio.codec == "pcm_u8"
    assert found.encodings[0].saving < 0
    assert found.reason == f"opus saves {found.encodings[0].saving:.0%}, under 10%"
    out = tmp_path / "out"
    out.mkdir()
    assert advise.optimize(phone, out, audio=advise.AudioOptions(min_size=1)) is None
    assert list(out.iterdir()) == []
    phone.unlink()
    out.rmdir()
    assert list(tmp_path.iterdir()) == []


def test_optimize_at_a_chosen_bit_rate(samples, tmp_path):
    smaller = advise.optimize(
        samples["flac"], tmp_path, audio=advise.AudioOptions(bitrate=32_000, min_size=100_000)
    )
    assert smaller is not None
    assert opus_file(smaller)[2] == 2
    assert 0.5 < smaller.stat().st_size / (32_000 * SECONDS / 8) < 1.5


# -- the command ------------------------------------------------------------------------------------
def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_advise_json_gives_the_numbers_and_the_advice(samples):
    done = run("advise", str(samples["wav"]), str(samples["mp3"]), "--json",
               "--uplink", "256kbit", "--audio-min-size", "100KiB")  # fmt: skip
    assert done.exit_code == 0, done.output
    wav, mp3 = (json.loads(line) for line in done.output.splitlines())
    size = samples["wav"].stat().st_size
    (opus,) = wav["encodings"]
    assert wav["kind"] == "audio" and wav["image"] is False and wav["originalBytes"] == size
    assert wav["uplinkBitsPerSecond"] == 256_000
    assert (wav["recommendation"], wav["reason"]) == (
        "re-encode", f"uncompressed (pcm_s16le); opus saves {opus['saving']:.0%}")  # fmt: skip
    assert opus["format"] == "opus" and opus["bitrate"] == 64_000 and "quality" not in opus
    assert opus["originalBytes"] == size and opus["estimated"] is False
    assert opus["saving"] == round(1 - opus["bytes"] / size, 4)
    assert opus["transferSecondsSaved"] == round((size - opus["bytes"]) * 8 / 256_000, 3)
    assert opus["encodeSeconds"] >= 0
    assert wav["audio"] == {"container": "wav", "codec": "pcm_s16le", "sampleRate": RATE,
                            "channels": 1, "durationSeconds": 4.0, "measuredSeconds": 4.0}  # fmt: skip
    assert (mp3["recommendation"], mp3["reason"]) == ("skip", "already compressed (mp3)")


def test_advise_text_says_what_was_measured_and_what_to_do(samples, tmp_path):
    done = run("advise", str(samples["wav"]), "--measure-seconds", "1", "--uplink", "1Mbit",
               "--opus-bitrate", "48k", env={"OUTBOX_AUDIO_MIN_SIZE": "100KiB"})  # fmt: skip
    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    kib = samples["wav"].stat().st_size / 1024
    assert (
        lines[0]
        == f"{samples['wav']}: audio (wav, pcm_s16le, 48000 Hz, 1 ch, 4.0 s), {kib:.1f} KiB"
    )
    assert lines[1].startswith("  opus 48 kbit/s: ")
    assert "upload at 1 Mbit/s 3.1 s -> " in lines[1]
    assert lines[2].startswith("  measured on the first 1.0 s of 4.0 s; size and time extrapolated")
    assert lines[3].startswith("  advice: re-encode: uncompressed (pcm_s16le); opus saves ")
    other = tmp_path / "notes.txt"
    other.write_text("hello\n")
    done = run("advise", str(other))
    assert done.output == f"{other}: not an image or audio file this can re-encode\n"
    done = run("advise", str(other), "--json")
    assert json.loads(done.output) == {
        "file": str(other), "kind": None, "image": False, "originalBytes": None, "encodings": [],
        "recommendation": None, "reason": None, "uplinkBitsPerSecond": 1_000_000,
    }  # fmt: skip


@pytest.mark.parametrize("option", ["--uplink", "--opus-bitrate"])
def test_a_bad_rate_is_a_usage_error_that_names_the_option(samples, option):
    done = CliRunner().invoke(main, ["advise", str(samples["wav"]), option, "1MB"])
    assert done.exit_code == 2
    assert option in done.output and "'1MB' is not a bit rate" in done.output


@pytest.mark.parametrize(("value", "ok"), [("5999", False), ("6k", True), ("510k", True),
                                           ("510001", False), ("1Mbit", False)])  # fmt: skip
def test_the_opus_bit_rate_is_one_opus_can_carry(samples, value, ok):
    done = CliRunner().invoke(main, ["advise", str(samples["wav"]), "--opus-bitrate", value])
    assert done.exit_code == (0 if ok else 2), done.output
    if not ok:
        assert f"{value!r} is not between 6 kbit/s and 510 kbit/s" in done.output


def test_push_optimize_queues_the_opus_copy_and_leaves_the_original(samples, tmp_path):
    path = samples["wav"]
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    outbox = tmp_path / "outbox"
    env = {"OUTBOX_DIR": str(outbox), "OUTBOX_AUDIO_MIN_SIZE": "100KiB"}
    done = run("push", str(path), str(samples["mp3"]), "-p", "p1", "--optimize", "--json", env=env)
    assert done.exit_code == 0, done.output
    item = json.loads(done.output)
    opus, mp3 = item["files"]
    assert opus["name"] == "rec.opus" and opus["size"] < len(before) * (1 - advise.MIN_SAVING)
    assert mp3["name"] == "rec.mp3" and mp3["size"] == samples["mp3"].stat().st_size
    copies = sorted((outbox / "files" / item["id"]).iterdir())
    assert opus_file(next(c for c in copies if c.suffix == ".opus"))[:3] == ("ogg", "opus", 1)
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime


@pytest.fixture
def gateway(tmp_path):
    """A gateway app on loopback (werkzeug) that admits Ogg and WAV audio."""
    app = create_app(make_settings(
        tmp_path / "gw", allowed_types=("image/*", "audio/ogg", "audio/wav", "audio/x-wav")))  # fmt: skip
    init_stores(app.extensions["gateway"])
    with app.app_context():
        token = mint_token("alice")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.port}", token, app.extensions["gateway"]
    server.shutdown()
    server.server_close()


def test_push_optimize_then_sync_stores_the_opus_copy_at_the_gateway(samples, tmp_path, gateway):
    url, token, svc = gateway
    path = samples["wav"]
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    env = {"OUTBOX_DIR": str(tmp_path / "outbox"), "OUTBOX_AUDIO_MIN_SIZE": "100KiB",
           "OUTBOX_GATEWAY": url, "OUTBOX_TOKEN": token}  # fmt: skip
    pushed = run("push", str(path), "-p", "p1", "--optimize", "--json", env=env)
    assert pushed.exit_code == 0, pushed.output
    queued = json.loads(pushed.output)["files"][0]
    # In a process of its own: sync sets the process's default socket timeout and SIGINT handler.
    synced = subprocess.run([sys.executable, "-m", "outbox", "sync", "--json"], cwd=ROOT,
                            env={**os.environ, **env}, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert synced.returncode == 0, synced.stderr
    done = json.loads(run("status", json.loads(pushed.output)["id"], "--json", env=env).output)
    assert done["state"] == "done"
    record = svc.records.get(done["files"][0]["record"]["mediaId"])
    assert (record.original_name, record.mime_type) == ("rec.opus", "audio/ogg")
    assert (record.size, record.sha256) == (queued["size"], queued["sha256"])
    stored = Path(svc.settings.storage_url) / record.s3_key
    container, codec, channels, duration, _ = opus_file(stored)
    assert (container, codec, channels) == ("ogg", "opus", 1)
    assert abs(duration - SECONDS) <= FRAME
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    assert os.path.getsize(path) == len(before)
