"""Reading and writing pictures: what Pillow gives us, normalised, and nothing lost silently.

A `Picture` is an (H, W, C) uint8 array with C = 1 (grey), 3 (RGB) or
4 (RGBA), plus the source's ICC profile. Conversions made on reading are
exact (palette -> RGB/RGBA, bilevel -> grey, grey+alpha -> RGBA, or grey
when the alpha is opaque; an EXIF orientation is applied, so the picture
is the one a viewer shows). Inputs that cannot be represented exactly
(more than 8 bits per sample, CMYK, floating point, several frames) are
refused with a message that says so, never truncated: Pillow itself reads
some 16-bit files (TIFF, PPM, JPEG 2000 in RGB) as 8-bit RGB without a
word, so the depth the file declares is checked as well.
"""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bitstream import ImageInfo, Limits
from codec.errors import InvalidRequestError, UnsupportedMediaError
from codec.fileio import StandardStream, display_name, read_input

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXIF_ORIENTATION = 0x0112
# Pillow counts an MPO's previews (phone and camera JPEGs) and a PSD's layers as frames; frame 0,
# what Pillow loads, is the picture itself (the main image, the composite).
_EXTRA_FRAMES_ARE_NOT_PICTURES = ("MPO", "PSD")


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


def _jpeg2000_bit_depth(data: bytes) -> int | None:
    """Deepest component of a JPEG 2000 codestream (SIZ marker), wrapped in a .jp2 box or bare."""
    siz = data.find(b"\xff\x4f\xff\x51")  # start of codestream, then SIZ (after any boxes, however large)
    if siz < 0 or len(data) < siz + 42:
        return None
    components = int.from_bytes(data[siz + 40 : siz + 42], "big")
    depths = data[siz + 42 : siz + 42 + 3 * components : 3]
    return max(((d & 0x7F) + 1 for d in depths), default=None)


def _avif_bit_depth(data: bytes) -> int | None:
    """Bits per channel from an AVIF file's `pixi` property box."""
    box = data.find(b"pixi", 0, 1 << 16)
    if box < 4 or len(data) < box + 9:
        return None
    channels = data[box + 8]
    return max(data[box + 9 : box + 9 + channels], default=None)


def declared_bit_depth(data: bytes, im: Image.Image) -> int:
    """Bits per sample the file declares, where Pillow's mode may hide it (8 when nothing says more)."""
    depth: int | None = None
    if im.format == "PNG":
        depth = _png_bit_depth(data[:32])
    elif im.format == "TIFF":
        bits = im.tag_v2.get(258, 8)  # BitsPerSample, one per sample
        depth = max(bits) if isinstance(bits, tuple) else int(bits)
    elif im.format == "PPM":
        maxval = max((t.args[1] for t in im.tile if len(t.args) > 1 and isinstance(t.args[1], int)), default=255)
        depth = 16 if maxval > 255 else 8
    elif im.format == "JPEG2000":
        depth = _jpeg2000_bit_depth(data)
    elif im.format == "AVIF":
        depth = _avif_bit_depth(data)
    return depth or 8


def _open(data: bytes, name: str) -> Image.Image:
    """Pillow's lazy open (header only), its failures as one-line errors."""
    try:
        with warnings.catch_warnings():
            # vqz checks its own pixel limit right after; Pillow's warning would be a second, multi-line say
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UnsupportedMediaError(f"{name}: not an image file Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise UnsupportedMediaError(f"{name}: too many pixels to read safely ({exc})") from None
    except (OSError, ValueError, RuntimeError, SyntaxError, EOFError) as exc:  # some plugins decode on open
        raise UnsupportedMediaError(f"{name}: the image data is damaged ({exc})") from None


def _frames(im: Image.Image, name: str) -> int:
    """Frames (pages) of an image whose extra frames hold more pictures; 1 where they are previews or layers."""
    if im.format in _EXTRA_FRAMES_ARE_NOT_PICTURES:
        return 1
    try:
        return int(getattr(im, "n_frames", 1))
    except (TypeError, ValueError, OSError, EOFError, SyntaxError, struct.error) as exc:  # counting reads every frame
        raise UnsupportedMediaError(f"{name}: the image data is damaged ({exc})") from None


def load_image(data: bytes, name: str = "input", limits: Limits = Limits()) -> Picture:
    """Decode image file bytes (PNG, JPEG, WebP, TIFF, ... whatever Pillow reads)."""
    with warnings.catch_warnings():  # Pillow warns (on stderr, in several lines) of odd EXIF and the like
        warnings.simplefilter("ignore", UserWarning)
        return _load_image(data, name, limits)


def _load_image(data: bytes, name: str, limits: Limits) -> Picture:
    im = _open(data, name)
    _check_still(im, name, limits)
    _check_depth(declared_bit_depth(data, im), name)  # first: Pillow's mode says 8-bit RGB for some deeper files
    return _picture_of(im, name)


def _check_depth(depth: int, name: str) -> None:
    if depth > 8:
        raise UnsupportedMediaError(f"{name}: {depth}-bit images are not supported yet (convert to 8 bits first)")


def picture_from_pil(im: Image.Image, name: str = "image", limits: Limits = Limits()) -> Picture:
    """A Pillow image as vqz reads an image file: the same modes refused, the same exact conversions.

    Pillow opens a 16-bit RGB PNG as 8-bit "RGB": the depth the file
    declares is checked where the image still knows its file (its name, or
    the raw mode of pixels not yet loaded); an image made in memory holds
    what its mode says.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _check_still(im, name, limits)
        if getattr(im, "filename", ""):
            try:
                with open(im.filename, "rb") as f:
                    _check_depth(declared_bit_depth(f.read(), im), name)
            except OSError:
                pass  # the file is gone or moved: the pixels Pillow holds are all there is to go by
        if im.format in ("PNG", "TIFF", "PPM") and any("16" in _raw_mode(t) for t in im.tile or ()):
            _check_depth(16, name)  # (BMP's "BGR;16" is 5-6-5 colour: 16 bits a pixel, not a sample)
        return _picture_of(im, name)


def _raw_mode(tile) -> str:
    """The raw mode of a not-yet-loaded tile (e.g. "RGB;16B" for a 16-bit PNG that Pillow calls "RGB")."""
    args = getattr(tile, "args", None)
    return args if isinstance(args, str) else str(args[0]) if isinstance(args, tuple) and args else ""


def _check_still(im: Image.Image, name: str, limits: Limits) -> None:
    w, h = im.size
    if w * h > limits.max_pixels:
        raise UnsupportedMediaError(f"{name}: {w}x{h} pixels exceed the limit of {limits.max_pixels}")
    frames = _frames(im, name)
    if frames > 1:
        raise UnsupportedMediaError(f"{name}: has {frames} frames; vqz codes still images (extract one frame first)")


def _picture_of(im: Image.Image, name: str) -> Picture:
    """The picture an opened 8-bit-or-less image holds (its mode checked, EXIF orientation applied)."""
    icc = im.info.get("icc_profile") or None
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        raise UnsupportedMediaError(f"{name}: {mode} images (16/32-bit or float) are not supported yet")
    if mode in ("CMYK", "LAB", "HSV"):
        raise UnsupportedMediaError(f"{name}: {mode} images are not supported (convert to RGB first)")
    try:
        if im.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            im = ImageOps.exif_transpose(im)  # the picture as viewers show it; the tag is dropped
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's EXIF parser raises SyntaxError too
        raise UnsupportedMediaError(f"{name}: the image data is damaged ({exc})") from None
    try:  # the pixels are read here, by the first conversion or the array
        pixels = np.asarray(_exact_mode(im))
    except (OSError, ValueError) as exc:
        raise UnsupportedMediaError(f"{name}: the image data is damaged ({exc})") from None
    return Picture.from_array(pixels, icc)


def _exact_mode(im: Image.Image) -> Image.Image:
    """L, RGB or RGBA holding exactly what `im` holds (bilevel, palette, grey+alpha, colour keys, YCbCr converted)."""
    mode = im.mode
    if mode == "1":
        return im.convert("L")
    if mode in ("P", "PA"):
        return im.convert("RGBA" if ("transparency" in im.info or mode == "PA") else "RGB")
    if mode in ("L", "RGB") and "transparency" in im.info:  # a colour key (PNG tRNS): alpha in disguise
        keyed = im.convert(mode + "A")
        if keyed.getchannel("A").getextrema() == (255, 255):
            return im  # no pixel has the key colour: nothing is transparent
        im, mode = keyed, keyed.mode
    if mode == "LA":
        return im.convert("L") if im.getchannel("A").getextrema() == (255, 255) else im.convert("RGBA")
    if mode == "YCbCr":
        return im.convert("RGB")
    return im


def read_image(path: str | os.PathLike | StandardStream, limits: Limits = Limits()) -> Picture:
    """`load_image` of a file (or of the CLI's STDIN); a file that cannot be read is an `UnsupportedMediaError`."""
    try:
        data = read_input(path)
    except InvalidRequestError as exc:
        raise UnsupportedMediaError(str(exc)) from None
    except OSError as exc:
        raise UnsupportedMediaError(f"{display_name(path)}: {exc.strerror or exc}") from None
    return load_image(data, display_name(path), limits)


def psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    """PSNR in dB of 8-bit images over all channels; infinite for identical images (no stand-in number, which
    would weigh in any average it entered: callers say "exact")."""
    mse = float(np.mean((reference.astype(np.float64) - decoded.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * float(np.log10(255.0**2 / mse))


#: What `vqz decode` writes, by the output's file name ending: lossless formats only, so that writing
#: the decoded picture adds no loss of its own (a .jpg would be a second, silent lossy coding).
OUTPUT_FORMATS = {
    "": "PNG",
    ".png": "PNG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
    ".ppm": "PPM",  # colour (P6): a grey picture is written as equal R, G, B
    ".pgm": "PGM",  # grey (P5) only
    ".pnm": "PNM",  # either, as the picture is
}
_NETPBM = ("PPM", "PGM", "PNM")
_WITHOUT_ICC = ("BMP", *_NETPBM)
_WITHOUT_ALPHA = ("BMP", *_NETPBM)  # Pillow writes RGBA as a 32-bit BMP whose fourth byte readers ignore


def output_format(path: str | os.PathLike) -> str:
    """The Pillow format for an output file name (a name without an ending gets PNG)."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in OUTPUT_FORMATS:
        raise InvalidRequestError(
            f"{os.fspath(path)}: decoded images are written as .png, .tif/.tiff, .bmp or .ppm/.pgm/.pnm (lossless), "
            f"not {suffix}"
        )
    return OUTPUT_FORMATS[suffix]


def image_bytes(picture: Picture, fmt: str = "PNG") -> bytes:
    """The picture as a file of `fmt` (an `OUTPUT_FORMATS` value), ICC profile included."""
    p = picture.pixels
    if fmt in _WITHOUT_ICC and picture.icc:
        raise UnsupportedMediaError(f"{fmt} cannot hold this image's ICC colour profile: write .png or .tif")
    if fmt in _WITHOUT_ALPHA and p.shape[2] == 4:
        raise UnsupportedMediaError(f"{fmt} cannot hold an alpha channel: write .png or .tif")
    if fmt == "PGM" and p.shape[2] != 1:
        raise UnsupportedMediaError("PGM holds grey images and this one is in colour: write .ppm or .png")
    if fmt == "PPM" and p.shape[2] == 1:
        p = np.repeat(p, 3, axis=2)
    im = Image.fromarray(p[:, :, 0] if p.shape[2] == 1 else p)
    out = io.BytesIO()
    save_as = "PPM" if fmt in _NETPBM else fmt  # Pillow writes P5 or P6 by the picture's mode
    im.save(out, format=save_as, **({"icc_profile": picture.icc} if picture.icc else {}))
    return out.getvalue()


def png_bytes(picture: Picture) -> bytes:
    """The picture as a PNG file (with its ICC profile, if any)."""
    return image_bytes(picture, "PNG")
