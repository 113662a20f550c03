"""Reading pictures: exact conversions, and clear refusals instead of silent loss."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from codec.errors import InvalidRequestError, UnsupportedMediaError
from codec.fileio import _umask, atomic_write
from codec.media import Picture, _avif_bit_depth, image_bytes, load_image, output_format, png_bytes


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


def test_a_colour_key_is_transparency_not_dropped():
    """PNG tRNS on grey or RGB: pixels of the key colour are transparent, so the picture has an alpha."""
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8)
    pic = load_image(_encode(Image.fromarray(grey), transparency=5))
    assert pic.pixels.shape == (6, 8, 4) and (pic.pixels[:, :, 3] == 0).sum() == 1
    rgb = np.dstack([grey, grey, grey])
    pic = load_image(_encode(Image.fromarray(rgb), transparency=(7, 7, 7)))
    assert pic.pixels.shape == (6, 8, 4) and pic.pixels[0, 7, 3] == 0 and np.array_equal(pic.pixels[:, :, :3], rgb)
    pic = load_image(_encode(Image.fromarray(rgb), transparency=(1, 2, 3)))  # no pixel has the key colour
    assert pic.pixels.shape == (6, 8, 3) and np.array_equal(pic.pixels, rgb)


def test_sixteen_bit_and_cmyk_are_refused():
    deep = Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    with pytest.raises(UnsupportedMediaError, match="16"):
        load_image(_encode(deep))
    cmyk = Image.new("CMYK", (4, 4))
    with pytest.raises(UnsupportedMediaError, match="CMYK"):
        load_image(_encode(cmyk, "JPEG"))


def _patched(data: bytes, marker: bytes, offset: int, value: int) -> bytes:
    at = data.index(marker) + offset
    return data[:at] + bytes([value]) + data[at + 1 :]


def test_deep_files_that_pillow_reads_as_8_bit_are_refused():
    """Pillow reads 16-bit PPM (and RGB TIFF, JPEG 2000) as 8-bit RGB without a word: the declared depth decides."""
    rng = np.random.default_rng(2)
    ppm = b"P6 8 8 65535\n" + rng.integers(0, 65536, (8, 8, 3), dtype=np.uint16).astype(">u2").tobytes()
    assert Image.open(io.BytesIO(ppm)).mode == "RGB"
    with pytest.raises(UnsupportedMediaError, match="16-bit"):
        load_image(ppm)
    rgb = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    # a JPEG 2000 file whose SIZ marker declares 16 bits (first component's Ssiz = bits - 1)
    j2k = _patched(_encode(rgb, "JPEG2000"), b"\xff\x4f\xff\x51", 42, 15)
    with pytest.raises(UnsupportedMediaError, match="16-bit"):
        load_image(j2k)
    # AVIF's pixi box (libavif checks the whole file on open, so the reader is tested alone)
    avif = _encode(rgb, "AVIF")
    assert _avif_bit_depth(avif) == 8 and _avif_bit_depth(_patched(avif, b"pixi", 9, 10)) == 10
    with pytest.raises(UnsupportedMediaError, match="damaged"):
        load_image(_patched(avif, b"pixi", 9, 10))
    for fmt in ("PPM", "JPEG2000", "AVIF", "TIFF"):  # their 8-bit files still load
        assert load_image(_encode(rgb, fmt)).pixels.shape == (16, 16, 3)


def test_orientation_frames_opaque_grey_alpha_and_huge_headers():
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    turned = load_image(_encode(Image.fromarray(pixels), exif=exif))
    assert np.array_equal(turned.pixels, np.rot90(pixels, k=-1))
    frames = [Image.fromarray(pixels), Image.fromarray(255 - pixels)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(UnsupportedMediaError, match="2 frames"):
        load_image(gif.getvalue())
    mpo = io.BytesIO()  # a camera JPEG with a preview: Pillow's second frame is no second picture
    frames[0].save(mpo, format="MPO", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(mpo.getvalue())).n_frames == 2
    assert load_image(mpo.getvalue()).pixels.shape == (6, 10, 3)
    grey = rng.integers(0, 256, (5, 6), dtype=np.uint8)
    la = Image.fromarray(np.dstack([grey, np.full_like(grey, 255)]), "LA")
    pic = load_image(_encode(la))
    assert pic.pixels.shape == (5, 6, 1) and np.array_equal(pic.pixels[:, :, 0], grey)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 10000, 8, 2, 0, 0, 0))
    with pytest.raises(UnsupportedMediaError, match="too many pixels"):
        load_image(header + chunk(b"IEND", b""))


def test_decoded_images_are_written_in_lossless_formats_only():
    p = Picture(np.random.default_rng(4).integers(0, 256, (9, 7, 3), dtype=np.uint8))
    for name in ("a.png", "a.tif", "a.TIFF", "a.bmp", "a.ppm", "a"):
        assert np.array_equal(load_image(image_bytes(p, output_format(name))).pixels, p.pixels), name
    for name in ("a.jpg", "a.webp", "a.avif"):
        with pytest.raises(InvalidRequestError, match="lossless"):
            output_format(name)
    rgba = Picture(np.random.default_rng(5).integers(0, 256, (9, 7, 4), dtype=np.uint8))
    for name in ("a.png", "a.tif"):  # alpha kept...
        assert np.array_equal(load_image(image_bytes(rgba, output_format(name))).pixels, rgba.pixels), name
    for fmt in ("PPM", "PNM", "BMP"):  # ...or refused, never dropped (a 32-bit BMP's fourth byte reads as padding)
        with pytest.raises(UnsupportedMediaError, match="alpha"):
            image_bytes(rgba, fmt)
    grey = Picture(p.pixels[:, :, :1].copy())
    assert image_bytes(grey, output_format("a.pgm"))[:2] == b"P5"
    assert image_bytes(grey, output_format("a.pnm"))[:2] == b"P5"
    as_colour = load_image(image_bytes(grey, output_format("a.ppm")))  # P6, equal channels
    assert as_colour.pixels.shape == (9, 7, 3) and np.array_equal(as_colour.pixels, np.repeat(grey.pixels, 3, 2))
    assert image_bytes(p, output_format("a.pnm"))[:2] == b"P6"
    with pytest.raises(UnsupportedMediaError, match="grey"):
        image_bytes(p, output_format("a.pgm"))
    with pytest.raises(UnsupportedMediaError, match="ICC"):
        image_bytes(Picture(p.pixels, icc=b"icc"), "BMP")


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
    with pytest.raises(InvalidRequestError, match="no such folder"):
        atomic_write(tmp_path / "nope" / "out.bin", b"x")


def test_atomic_write_does_not_clobber_a_file_made_meanwhile(tmp_path, monkeypatch):
    """Between the check and the rename another program makes the file: it is kept, and ours is refused."""
    import tempfile

    target, real = tmp_path / "late.bin", tempfile.mkstemp

    def mkstemp_then_race(*args, **kwargs):
        target.write_bytes(b"theirs")
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_then_race)
    with pytest.raises(InvalidRequestError, match="exists"):
        atomic_write(target, b"ours")
    assert target.read_bytes() == b"theirs" and [p.name for p in tmp_path.iterdir()] == ["late.bin"]


def test_atomic_write_without_hard_links(tmp_path, monkeypatch):
    import errno
    import os

    def no_links(*args):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)  # a FAT or exFAT disk, say: renamed after the check instead
    atomic_write(tmp_path / "out.bin", b"data")
    assert (tmp_path / "out.bin").read_bytes() == b"data" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]
