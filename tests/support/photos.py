"""The one photo maker (photo: small, valid images in memory, a distinct colour per index when wanted), and
sample_images: every accepted format and mode, for the image loading and the pipeline tests."""

from __future__ import annotations

import io

from PIL import Image


def photo(
    color: str | int | tuple | None = "teal", size=(64, 48), format: str = "JPEG", mode: str = "RGB", **save
) -> bytes:
    """An encoded image of one colour. An int colour is an index: photo(i) and photo(j) differ for
    i != j (up to 256), so jobs made from them are distinct (no result cache hit, no equal MP3s); None is
    the mode's zero (black)."""
    if isinstance(color, int):
        color = ((color * 37) % 256, (color * 91) % 256, (color * 53) % 256)
    buf = io.BytesIO()
    Image.new(mode, size, 0 if color is None else color).save(buf, format, **save)
    return buf.getvalue()


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def gradient(mode: str = "RGB", size=(48, 32)) -> Image.Image:
    img = Image.new("RGB", size)
    img.putdata([(x * 5 % 256, y * 7 % 256, (x + y) % 256) for y in range(size[1]) for x in range(size[0])])
    return img.convert(mode)


def sample_images() -> dict[str, bytes]:
    """name -> encoded bytes; the same set the pipeline test narrates."""
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))  # fully transparent red
    rgba.paste((0, 0, 255, 255), (0, 0, 20, 30))  # left half opaque blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": a 48x32 sensor image shows as 32x48
    frame1, frame2 = Image.new("RGB", (30, 20), (0, 200, 0)), Image.new("RGB", (30, 20), (200, 0, 0))
    sixteen = Image.new("I;16", (30, 20))
    sixteen.putdata([v * 200 for v in range(600)])
    return {
        "rgb.jpg": encode(gradient(), "JPEG"),
        "rgba.png": encode(rgba, "PNG"),
        "gray.png": encode(gradient("L"), "PNG"),
        "palette.png": encode(gradient().convert("P"), "PNG"),
        "cmyk.jpg": encode(gradient("CMYK"), "JPEG"),
        "exif-rotated.jpg": encode(gradient(), "JPEG", exif=exif.tobytes()),
        "animated.gif": encode(frame1, "GIF", save_all=True, append_images=[frame2], duration=100, loop=0),
        "16bit.png": encode(sixteen, "PNG"),
        "photo.webp": encode(gradient(), "WEBP"),
        "photo.bmp": encode(gradient(), "BMP"),
        "photo.tiff": encode(gradient(), "TIFF"),
        "la.png": encode(gradient("LA"), "PNG"),
    }
