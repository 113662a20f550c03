"""Reading and writing pictures: what Pillow gives us, normalised, and nothing lost silently.

A `Picture` is an (H, W, C) uint8 array with C = 1 (grey), 3 (RGB) or
4 (RGBA), plus the source's ICC profile. Conversions made on reading are
exact (palette -> RGB/RGBA, bilevel -> grey, grey+alpha -> RGBA). Inputs
that cannot be represented exactly (16-bit, CMYK, floating point) are
refused with a message that says so, never truncated.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from bitstream import ImageInfo, Limits
from codec.errors import UnsupportedMediaError

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Picture:
    pixels: np.ndarray  # (H, W, C) uint8
    icc: bytes | None = None

    @property
    def info(self) -> ImageInfo:
        h, w, c = self.pixels.shape
        return ImageInfo(width=w, height=h, channels=c, bit_depth=8)

    @classmethod
    def from_array(cls, array: np.ndarray, icc: bytes | None = None) -> "Picture":
        """Accepts (H, W) or (H, W, C) uint8 arrays, C in 1, 3, 4."""
        a = np.asarray(array)
        if a.ndim == 2:
            a = a[:, :, None]
        if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or a.dtype != np.uint8:
            raise UnsupportedMediaError(
                f"expected an (H, W[, 1|3|4]) uint8 array, got shape {a.shape} and dtype {a.dtype}"
            )
        if a.shape[0] < 1 or a.shape[1] < 1:
            raise UnsupportedMediaError("the image is empty")
        return cls(np.ascontiguousarray(a), icc)

    def without_opaque_alpha(self) -> "Picture":
        """RGB(A) -> RGB when the alpha channel is fully opaque (a lossless drop)."""
        if self.pixels.shape[2] == 4 and bool((self.pixels[:, :, 3] == 255).all()):
            return Picture(self.pixels[:, :, :3].copy(), self.icc)
        return self


def _png_bit_depth(head: bytes) -> int | None:
    if head.startswith(_PNG_SIGNATURE) and len(head) >= 26 and head[12:16] == b"IHDR":
        return head[24]
    return None


def load_image(data: bytes, name: str = "input", limits: Limits = Limits()) -> Picture:
    """Decode image file bytes (PNG, JPEG, WebP, TIFF, ... whatever Pillow reads)."""
    if _png_bit_depth(data[:32]) == 16:
        raise UnsupportedMediaError(f"{name}: 16-bit images are not supported yet (convert to 8 bits first)")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UnsupportedMediaError(f"{name}: not an image file Pillow can read") from None
    w, h = im.size
    if w * h > limits.max_pixels:
        raise UnsupportedMediaError(f"{name}: {w}x{h} pixels exceed the limit of {limits.max_pixels}")
    icc = im.info.get("icc_profile") or None
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        raise UnsupportedMediaError(f"{name}: {mode} images (16/32-bit or float) are not supported yet")
    if mode in ("CMYK", "LAB", "HSV"):
        raise UnsupportedMediaError(f"{name}: {mode} images are not supported (convert to RGB first)")
    if mode == "1":
        im = im.convert("L")
    elif mode == "P" or mode == "PA":
        im = im.convert("RGBA" if ("transparency" in im.info or mode == "PA") else "RGB")
    elif mode == "LA":
        im = im.convert("RGBA")
    elif mode == "YCbCr":
        im = im.convert("RGB")
    try:
        pixels = np.asarray(im)
    except (OSError, ValueError) as exc:
        raise UnsupportedMediaError(f"{name}: the image data is damaged ({exc})") from None
    return Picture.from_array(pixels, icc)


def read_image(path: str | os.PathLike, limits: Limits = Limits()) -> Picture:
    with open(path, "rb") as f:
        data = f.read()
    return load_image(data, os.fspath(path), limits)


def psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    """PSNR in dB of 8-bit images over all channels (100 dB for identical images)."""
    mse = float(np.mean((reference.astype(np.float64) - decoded.astype(np.float64)) ** 2))
    return 100.0 if mse == 0 else 10 * float(np.log10(255.0**2 / mse))


def png_bytes(picture: Picture) -> bytes:
    """The picture as a PNG file (with its ICC profile, if any)."""
    p = picture.pixels
    im = Image.fromarray(p[:, :, 0] if p.shape[2] == 1 else p)
    out = io.BytesIO()
    im.save(out, format="PNG", icc_profile=picture.icc) if picture.icc else im.save(out, format="PNG")
    return out.getvalue()
