"""Decode an uploaded photo into a plain RGB image, or refuse it with a clear, typed error.

Pillow only (no torch): the web process validates uploads with this before queueing a job,
and the worker decodes with the same function, so both agree on what is an acceptable photo.
"""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path
from typing import cast

from PIL import Image, ImageOps, UnidentifiedImageError

# MPO is what many cameras write: a JPEG with extra frames; its first frame is a normal JPEG.
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})
ACCEPTED_LABEL = "JPEG, PNG, WebP, GIF, BMP or TIFF"


class ImageError(ValueError):
    """An image that cannot be used; `code` is stable for API clients, `message` is for people."""

    def __init__(self, code: str, message: str, http_status: int):
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status

    def __str__(self) -> str:
        return self.message


def _too_many(width: int, height: int, max_pixels: int) -> ImageError:
    return ImageError(
        "too_many_pixels",
        f"The image is {width}x{height} pixels ({width * height / 1e6:.1f} MP); "
        f"the limit is {max_pixels / 1e6:.1f} MP.",
        413,
    )


def _truncated(exc: BaseException) -> ImageError:
    return ImageError("truncated_image", f"The image is truncated or corrupt and cannot be decoded ({exc}).", 415)


def _read(source: bytes | str | Path) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    path = Path(source)
    if not path.exists():
        raise ImageError("not_found", f"No such file: {path}", 404)
    if not path.is_file():  # a folder, a FIFO (reading one could block forever), a device
        raise ImageError("unreadable", "The file cannot be read: not a regular file.", 400)
    try:
        return path.read_bytes()
    except OSError as exc:  # permission denied, an I/O error, a file that vanished meanwhile
        raise ImageError("unreadable", f"The file cannot be read: {exc.strerror or exc}.", 400) from None


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    # Pillow's I;16/I -> L conversion clips at 255 (a 16-bit photo turns white), so rescale first.
    if img.mode == "F":
        low, high = cast(tuple[float, float], img.getextrema())
        span = (high - low) or 1.0
        return img.point(lambda v: (v - low) * 255.0 / span).convert("L")
    img = img.convert("I")
    _, high = cast(tuple[int, int], img.getextrema())
    if high > 255:  # 16-bit data (the usual case); 8-bit data stored as I is left as is
        img = img.point(lambda v: v / 257)
    return img.convert("L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparency is composited on white (what a viewer shows)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode.startswith("I") or img.mode == "F":
        img = _high_bit_depth_to_l(img)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _open(data: bytes) -> Image.Image:
    """Parse the header only (nothing is decoded); map Pillow's failures to ImageError."""
    if not data:
        raise ImageError("empty_file", "The file is empty.", 400)
    try:
        with warnings.catch_warnings():
            # Our own limit below is the one that counts; Pillow's warning is just noise here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError("too_many_pixels", f"The image has too many pixels: {exc}", 413) from None
    except UnidentifiedImageError:  # no decoder recognised the bytes at all
        raise ImageError(
            "not_an_image", f"The file is not a readable image (accepted: {ACCEPTED_LABEL}).", 415
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # recognised, but the header is cut off
        raise _truncated(exc) from None


def _check_header(img: Image.Image, max_pixels: int | None) -> None:
    if img.format not in ACCEPTED_FORMATS:
        raise ImageError(
            "unsupported_format",
            f"{img.format} images are not accepted (accepted: {ACCEPTED_LABEL}).",
            415,
        )
    width, height = img.size  # from the header: nothing is decoded yet
    if max_pixels is not None and width * height > max_pixels:
        raise _too_many(width, height, max_pixels)


def check_image(source: bytes | str | Path, max_pixels: int | None = None) -> str:
    """Validate an upload without holding a decoded copy of it; return its Pillow format name.

    Refuses exactly what load_image refuses by the same codes, but in bounded memory, so that
    many concurrent uploads of large (or bomb-like) images cannot exhaust a web process:
    format and pixel count come from the header; a PNG is checked chunk by chunk (every CRC up
    to IEND: a cut-off or damaged file fails, nothing is inflated); a JPEG is decoded by libjpeg
    at 1/8 scale (all of its entropy-coded data is still read, so truncation is caught); other
    formats are decoded once and dropped at once. A PNG whose compressed pixel data is broken
    while every CRC is right passes here and fails in the worker's load_image.
    Callers that run several checks at a time should bound how many decode at once (the web
    process does): a full decode of MAX_IMAGE_PIXELS can take up to 4 bytes per pixel.
    """
    data = _read(source)
    img = _open(data)
    with img:
        _check_header(img, max_pixels)
        fmt = img.format or ""  # _open only returns images of a known format
        try:
            if fmt == "PNG":
                img.verify()
            else:
                if fmt in ("JPEG", "MPO"):
                    width, height = img.size
                    img.draft(None, (max(1, width // 8), max(1, height // 8)))
                img.seek(0)
                img.load()  # LOAD_TRUNCATED_IMAGES stays off: a cut-off upload must fail here
        except Image.DecompressionBombError as exc:
            raise ImageError("too_many_pixels", f"The image has too many pixels: {exc}", 413) from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
            raise _truncated(exc) from None
    return fmt


def load_image(source: bytes | str | Path, max_pixels: int | None = None) -> Image.Image:
    """Fully decode the first frame, apply EXIF orientation, return a detached RGB image."""
    data = _read(source)
    img = _open(data)
    with img:
        _check_header(img, max_pixels)
        try:
            img.seek(0)
            img.load()  # LOAD_TRUNCATED_IMAGES stays off: a cut-off upload must fail here
        except Image.DecompressionBombError as exc:
            raise ImageError("too_many_pixels", f"The image has too many pixels: {exc}", 413) from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise _truncated(exc) from None
        try:
            oriented = ImageOps.exif_transpose(img)
        except Exception:  # broken EXIF should not refuse an otherwise good photo
            oriented = img
        rgb = to_rgb(oriented)
        # Always hand back a copy so nothing refers to the closed source image.
        return rgb.copy() if rgb is img else rgb
