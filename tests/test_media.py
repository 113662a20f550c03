"""Reading pictures: exact conversions, and clear refusals instead of silent loss."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from codec.errors import InvalidRequestError, UnsupportedMediaError
from codec.fileio import _umask, atomic_write
from codec.media import Picture, load_image, png_bytes


def _encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    out = io.BytesIO()
    im.save(out, format=fmt, **kw)
    return out.getvalue()


def test_palette_and_grey_alpha_are_expanded_exactly():
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).quantize(16)
    pic = load_image(_encode(rgb))
    assert pic.pixels.shape == (20, 30, 3)
    assert np.array_equal(pic.pixels, np.asarray(rgb.convert("RGB")))
    la = Image.fromarray(rng.integers(0, 256, (5, 6, 2), dtype=np.uint8), "LA")
    pic = load_image(_encode(la))
    assert pic.pixels.shape == (5, 6, 4) and np.array_equal(pic.pixels[:, :, 3], np.asarray(la)[:, :, 1])


def test_sixteen_bit_and_cmyk_are_refused():
    deep = Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    with pytest.raises(UnsupportedMediaError, match="16"):
        load_image(_encode(deep))
    cmyk = Image.new("CMYK", (4, 4))
    with pytest.raises(UnsupportedMediaError, match="CMYK"):
        load_image(_encode(cmyk, "JPEG"))


def test_not_an_image_and_damaged_image():
    with pytest.raises(UnsupportedMediaError, match="not an image"):
        load_image(b"plain text")
    data = _encode(Image.new("RGB", (64, 64), "red"))
    with pytest.raises(UnsupportedMediaError, match="damaged"):
        load_image(data[: len(data) // 2])


def test_png_output_round_trips_with_icc():
    p = Picture(np.random.default_rng(1).integers(0, 256, (9, 7, 4), dtype=np.uint8), icc=b"icc")
    back = load_image(png_bytes(p))
    assert np.array_equal(back.pixels, p.pixels) and back.icc == b"icc"


def test_atomic_write_never_clobbers(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write(target, b"one")
    with pytest.raises(InvalidRequestError, match="exists"):
        atomic_write(target, b"two")
    atomic_write(target, b"three", force=True)
    assert target.read_bytes() == b"three"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()
