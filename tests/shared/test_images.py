"""Real images in every accepted format and mode, built in memory, through load_image."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest
from PIL import Image

from shared.images import ACCEPTED_FORMATS, ImageError, check_image, load_image
from tests.support.photos import encode, gradient, sample_images


@pytest.mark.parametrize("name", sorted(sample_images()))
def test_every_accepted_format_and_mode_becomes_rgb(name):
    img = load_image(sample_images()[name])
    assert img.mode == "RGB"
    assert img.width > 0 and img.height > 0
    img.tobytes()  # fully decoded, independent of the source


def test_rgba_is_composited_on_white():
    img = load_image(sample_images()["rgba.png"])
    assert img.getpixel((5, 5)) == (0, 0, 255)
    assert img.getpixel((35, 5)) == (255, 255, 255)  # transparent -> white, not black or red


def test_exif_orientation_is_applied():
    img = load_image(sample_images()["exif-rotated.jpg"])
    assert img.size == (32, 48)
    assert load_image(sample_images()["rgb.jpg"]).size == (48, 32)


def test_animated_gif_gives_first_frame():
    r, g, b = load_image(sample_images()["animated.gif"]).getpixel((10, 10))
    assert g > 150 and r < 50


def test_16_bit_png_keeps_its_tones():
    img = load_image(sample_images()["16bit.png"])
    values = [img.getpixel((x, y))[0] for x, y in [(0, 0), (15, 10), (29, 19)]]
    assert values[0] < values[1] < values[2] < 255  # a naive conversion clips all this to 255


def test_cmyk_colours_survive():
    src = Image.new("RGB", (16, 16), (255, 0, 0)).convert("CMYK")
    r, g, b = load_image(encode(src, "JPEG", quality=95)).getpixel((8, 8))
    assert r > 200 and g < 60 and b < 60


def test_path_and_bytes_give_the_same_image(tmp_path):
    data = sample_images()["photo.webp"]
    path = tmp_path / "p.webp"
    path.write_bytes(data)
    assert load_image(path).tobytes() == load_image(data).tobytes() == load_image(str(path)).tobytes()


def error_of(source, **kwargs) -> ImageError:
    with pytest.raises(ImageError) as info:
        load_image(source, **kwargs)
    return info.value


def test_missing_file(tmp_path):
    err = error_of(tmp_path / "nope.jpg")
    assert err.code == "not_found" and "nope.jpg" in str(err)


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_path_that_is_not_a_regular_file(tmp_path, kind):
    path = tmp_path / "photo.jpg"
    path.mkdir() if kind == "folder" else os.mkfifo(path)  # reading a FIFO must not block
    err = error_of(path)
    assert (err.code, err.http_status) == ("unreadable", 400)


def test_read_error_is_an_image_error(tmp_path, monkeypatch):
    path = tmp_path / "photo.png"
    path.write_bytes(sample_images()["rgba.png"])

    def fail(self):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(Path, "read_bytes", fail)
    err = error_of(path)
    assert (err.code, err.http_status) == ("unreadable", 400) and "Input/output error" in str(err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file anyway")
def test_unreadable_file(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(sample_images()["rgba.png"])
    path.chmod(0)
    err = error_of(path)
    assert (err.code, err.http_status) == ("unreadable", 400) and "Permission denied" in str(err)


def test_empty_file():
    err = error_of(b"")
    assert (err.code, err.http_status) == ("empty_file", 400)
    assert str(err) == err.message


@pytest.mark.parametrize("data", [b"hello, this is text\n" * 20, b"%PDF-1.4\n" + bytes(range(256)) * 4])
def test_not_an_image(data):
    err = error_of(data)
    assert (err.code, err.http_status) == ("not_an_image", 415)


def test_unsupported_format():
    err = error_of(encode(gradient(), "PCX"))
    assert (err.code, err.http_status) == ("unsupported_format", 415)
    assert "PCX" in err.message
    assert "PCX" not in ACCEPTED_FORMATS


@pytest.mark.parametrize("fmt", ["JPEG", "BMP", "PNG", "TIFF"])
def test_truncated_image(fmt):
    data = encode(gradient(size=(300, 200)), fmt)
    cut = data[: len(data) // 2]
    assert Image.open(io.BytesIO(cut)).size == (300, 200)  # the header alone still parses
    err = error_of(cut)
    assert (err.code, err.http_status) == ("truncated_image", 415)


@pytest.mark.parametrize("name", ["rgb.jpg", "photo.webp"])
def test_image_cut_before_its_pixels_is_truncated_not_foreign(name):
    # Pillow recognises the format but fails in open(): still "truncated", not "not an image".
    data = sample_images()[name]
    err = error_of(data[: min(300, len(data) // 2)])
    assert err.code == "truncated_image"


def test_pixel_limit_is_checked_from_the_header():
    data = encode(Image.new("L", (400, 300)), "PNG")
    err = error_of(data, max_pixels=100_000)
    assert (err.code, err.http_status) == ("too_many_pixels", 413)
    assert "400x300" in err.message
    assert load_image(data, max_pixels=120_000).size == (400, 300)


def test_decompression_bomb_maps_to_too_many_pixels(monkeypatch):
    # Pillow's own guard (2x MAX_IMAGE_PIXELS) must surface as our error, not a raw exception.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    err = error_of(encode(Image.new("L", (100, 100)), "PNG"))
    assert err.code == "too_many_pixels"


# --- check_image: the web process's validation, in bounded memory ------------------------------


@pytest.mark.parametrize("name", sorted(sample_images()))
def test_check_image_accepts_what_load_image_accepts(name):
    data = sample_images()[name]
    with Image.open(io.BytesIO(data)) as img:
        assert check_image(data) == img.format


def check_error_of(source, **kwargs) -> ImageError:
    with pytest.raises(ImageError) as info:
        check_image(source, **kwargs)
    return info.value


@pytest.mark.parametrize(
    "data, code, status",
    [
        (b"", "empty_file", 400),
        (b"hello, this is text\n" * 20, "not_an_image", 415),
        (encode(gradient(), "PCX"), "unsupported_format", 415),
        (sample_images()["rgb.jpg"][:300], "truncated_image", 415),
    ],
)
def test_check_image_refuses_with_load_images_codes(data, code, status):
    err = check_error_of(data)
    assert (err.code, err.http_status) == (code, status)
    assert (error_of(data).code, error_of(data).http_status) == (code, status)


@pytest.mark.parametrize("fmt", ["JPEG", "BMP", "PNG", "TIFF", "WEBP", "GIF"])
def test_check_image_finds_truncated_images(fmt):
    data = encode(gradient(size=(300, 200)), fmt)
    err = check_error_of(data[: len(data) // 2])
    assert (err.code, err.http_status) == ("truncated_image", 415)


def test_check_image_finds_a_png_cut_at_a_chunk_boundary_and_bad_crcs():
    data = encode(gradient(size=(300, 200)), "PNG")
    assert data.endswith(b"IEND\xaeB`\x82")
    assert check_error_of(data[:-12]).code == "truncated_image"  # everything but IEND
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0xFF  # inside IDAT: its CRC no longer matches
    assert check_error_of(bytes(damaged)).code == "truncated_image"


def test_check_image_pixel_limit_comes_from_the_header():
    data = encode(Image.new("L", (400, 300)), "PNG")
    err = check_error_of(data, max_pixels=100_000)
    assert (err.code, err.http_status) == ("too_many_pixels", 413) and "400x300" in err.message
    assert check_image(data, max_pixels=120_000) == "PNG"


@pytest.mark.process
def test_check_image_of_40_megapixels_stays_small(tmp_path):
    """A 40 MP 1-bit PNG (a few KiB) and a 40 MP JPEG are checked without decoding them whole:
    load_image holds 120 MB (RGB) for either; the peak here grows by a few MB. Measured in a
    fresh process, whose peak RSS is not that of earlier tests."""
    import subprocess
    import sys

    bomb = tmp_path / "bomb.png"
    Image.new("1", (8000, 5000)).save(bomb, "PNG")
    photo = tmp_path / "photo.jpg"
    Image.new("L", (8000, 5000), 128).save(photo, "JPEG", quality=50)
    code = (
        "import resource, sys\n"
        "from shared.images import check_image\n"
        "data = [open(p, 'rb').read() for p in sys.argv[1:]]\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "formats = [check_image(d, 40_000_000) for d in data]\n"
        "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print(' '.join(formats), grown // 1024)\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code, str(bomb), str(photo)], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    formats_png, formats_jpeg, grown_mb = result.stdout.split()
    print(f"check_image of 40 MP PNG + JPEG: peak RSS grew by {grown_mb} MB")
    assert (formats_png, formats_jpeg) == ("PNG", "JPEG")
    assert int(grown_mb) < 30
