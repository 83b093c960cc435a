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
