"""Real media made on the fly: JPEGs with EXIF (GPS, orientation, camera), PNGs, an MP4, PDFs."""

from __future__ import annotations

import io

from PIL import Image, ImageCms

GPS = {1: "N", 2: (52.0, 30.0, 0.0), 3: "E", 4: (13.0, 24.0, 0.0)}
XMP_WITH_GPS = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/'
    b'02/22-rdf-syntax-ns#"><rdf:Description xmlns:exif="http://ns.adobe.com/exif/1.0/"'
    b' exif:GPSLatitude="52,30N" exif:GPSLongitude="13,24E"/></rdf:RDF></x:xmpmeta>'
)


def photo(width=1600, height=1200, *, gps=True, orientation=6, icc=True, xmp=False) -> bytes:
    image = Image.new("RGB", (width, height))
    image.paste((200, 30, 30), (0, 0, width // 2, height))  # left half red, right half blue
    image.paste((30, 30, 200), (width // 2, 0, width, height))
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "Acme", "Cam 1", orientation
    exif.get_ifd(0x8769)[0x9003] = "2026:01:02 03:04:05"
    if gps:
        exif.get_ifd(0x8825).update(GPS)
    extra = {}
    if icc:
        extra["icc_profile"] = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    if xmp:
        extra["xmp"] = XMP_WITH_GPS
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif, quality=90, **extra)
    return out.getvalue()


def png(width=300, height=200, mode="RGBA") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), (0, 128, 0, 128) if mode == "RGBA" else 128).save(out, "PNG")
    return out.getvalue()


def bomb() -> bytes:
    """A small PNG that decodes to 400 megapixels."""
    out = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(out, "PNG")
    return out.getvalue()


def mp4(seconds=3, width=320, height=240) -> bytes:
    import av

    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(seconds * 10):
            frame = av.VideoFrame.from_image(
                Image.new("RGB", (width, height), (i * 8 % 256, 90, 40))
            )
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def pdf(pages=3) -> bytes:
    out = io.BytesIO()
    images = [Image.new("RGB", (600, 800), (255, 255, 255 - i * 40)) for i in range(pages)]
    images[0].save(out, "PDF", save_all=True, append_images=images[1:])
    return out.getvalue()


# -- audio ---------------------------------------------------------------------------------------------
def pcm(
    seconds=1.0, rate=48000, channels=2, amplitude=0.5, frequency=440.0, signal="sine", seed=1
) -> bytes:
    """16-bit little-endian samples, interleaved: a sine (or white noise, a constant level, or
    silence) of ``amplitude`` (1.0: full scale) on every channel."""
    import math
    import random
    from array import array

    count = round(seconds * rate)
    peak = round(amplitude * 32767)
    if signal == "sine":
        step = 2 * math.pi * frequency / rate
        mono = [round(peak * math.sin(step * i)) for i in range(count)]
    elif signal == "noise":
        draw = random.Random(seed).randint
        mono = [draw(-peak, peak) for _ in range(count)]
    elif signal == "dc":  # a constant level
        mono = [peak] * count
    else:
        mono = [0] * count
    samples = array("h", (value for value in mono for _ in range(channels)))
    return samples.tobytes()  # the machine's byte order: little-endian here (x86, ARM)


def wav(seconds=1.0, rate=48000, channels=2, **signal) -> bytes:
    """A WAV written by the standard library's ``wave``."""
    import wave

    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(pcm(seconds, rate, channels, **signal))
    return out.getvalue()


def encode(source: bytes, container: str, codec: str, *, rate=None, channels=None, bit_rate=None,
           codec_options=None, container_options=None, metadata=None) -> bytes:  # fmt: skip
    """``source`` (any audio PyAV reads, e.g. ``wav()``) encoded with PyAV: a real file of
    ``codec`` in ``container``, its timestamps the decoder's."""
    import av

    out = io.BytesIO()
    with (
        av.open(io.BytesIO(source)) as src,
        av.open(out, "w", format=container, options=container_options or {}) as dst,
    ):
        stream_in = src.streams.audio[0]
        count = channels or stream_in.channels
        stream = dst.add_stream(
            codec, rate=rate or stream_in.rate, layout="mono" if count == 1 else "stereo"
        )
        formats = [f.name for f in stream.codec_context.codec.audio_formats or ()]
        if formats and "s16" not in formats:
            stream.codec_context.format = formats[0]
        if bit_rate:
            stream.bit_rate = bit_rate
        if codec_options:
            stream.codec_context.options = codec_options
        for key, value in (metadata or {}).items():
            dst.metadata[key] = value
        for frame in src.decode(stream_in):
            frame.pts = None
            for packet in stream.encode(frame):
                dst.mux(packet)
        for packet in stream.encode():
            dst.mux(packet)
    return out.getvalue()


# (container, codec, extra encode() arguments) of the formats the tests make with PyAV.
AUDIO_FORMATS = {
    "mp3": ("mp3", "libmp3lame", {}),
    "aac": ("adts", "aac", {}),
    "m4a": ("ipod", "aac", {}),
    "opus": ("ogg", "libopus", {}),
    "webm": ("webm", "libopus", {}),
    "mka": ("matroska", "libopus", {}),
    "vorbis": ("ogg", "vorbis", {"codec_options": {"strict": "experimental"}}),
    "flac": ("flac", "flac", {}),
    "aiff": ("aiff", "pcm_s16be", {}),
    "caf": ("caf", "pcm_s16le", {}),
    "amr": ("amr", "libopencore_amrnb", {"rate": 8000, "channels": 1, "bit_rate": 12200}),
    "rf64": ("wav", "pcm_s16le", {"container_options": {"rf64": "always"}}),
}


def audio(kind: str, seconds=1.0, **signal) -> bytes:
    """A real file of ``kind`` (a key of AUDIO_FORMATS, or "wav")."""
    source = wav(seconds, **signal)
    if kind == "wav":
        return source
    container, codec, extra = AUDIO_FORMATS[kind]
    return encode(source, container, codec, **extra)
