"""The codecs `vqz eval` compares: classical ones through real libraries, and vqz's own.

Each `EvalCodec` turns an (H, W, C) uint8 array into the bytes of a complete
file and back, at a quality setting from its own sweep. Classical codecs
write their real file formats (Pillow: libjpeg-turbo, libwebp, libavif,
OpenJPEG; imagecodecs: libjxl), so sizes are honest whole-file sizes.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from codec.errors import InvalidRequestError, UnknownCodecError


@dataclass(frozen=True)
class EvalCodec:
    name: str
    description: str
    qualities: tuple[float, ...]  # default sweep, low to high rate
    encode: Callable[[np.ndarray, float], bytes]
    decode: Callable[[bytes], np.ndarray]
    #: what makes results of this codec stale: library versions, or the weights digest
    fingerprint: str = ""
    #: the settings it takes (None: it has none), and whether only whole numbers are distinct settings
    quality_range: tuple[float, float] | None = (0.0, 100.0)
    whole: bool = True
    #: the longest side its library codes (None: no limit an evaluation meets); larger images are skipped
    max_side: int | None = None


def check_sweep(codec: EvalCodec, sweep: Sequence[float]) -> None:
    """Refuse a --qualities sweep the codec cannot run as asked, before any work."""
    where = f"--qualities {codec.name}"
    if codec.quality_range is None:
        raise InvalidRequestError(f"{where}: {codec.name} has no quality setting (leave it out of --qualities)")
    lo, hi = codec.quality_range
    for q in sweep:
        if not (math.isfinite(q) and lo <= q <= hi):
            raise InvalidRequestError(f"{where}: {q:g} is outside {lo:g}..{hi:g}")
        if codec.whole and q != int(q):
            raise InvalidRequestError(f"{where}: {q:g} is not a whole number (it would be {int(q)})")
    if len(set(sweep)) != len(sweep):
        raise InvalidRequestError(f"{where}: a quality appears twice")


def _pil_image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)


def _pil_version(feature: str) -> str:
    import PIL
    from PIL import features

    return f"Pillow {PIL.__version__}, {feature} {features.version(feature)}"


def _pil_encoder(fmt: str, **fixed) -> Callable[[np.ndarray, float], bytes]:
    def encode(pixels: np.ndarray, quality: float) -> bytes:
        out = io.BytesIO()
        _pil_image(pixels).save(out, format=fmt, quality=int(quality), **fixed)
        return out.getvalue()

    return encode


def _pil_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        a = np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im)
    return a[:, :, None] if a.ndim == 2 else a


def _jpeg2000_encode(pixels: np.ndarray, ratio: float) -> bytes:
    out = io.BytesIO()
    # irreversible 9/7 wavelet with the multi-component (RGB -> YCbCr) transform, as JPEG 2000 is meant to be used
    _pil_image(pixels).save(out, format="JPEG2000", quality_mode="rates", quality_layers=[ratio], irreversible=True,
                            mct=1 if pixels.shape[2] == 3 else 0)  # fmt: skip
    return out.getvalue()


def _jxl_encode(pixels: np.ndarray, distance: float) -> bytes:
    import imagecodecs

    return bytes(
        imagecodecs.jpegxl_encode(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels, distance=distance, effort=7)
    )


def _imagecodecs_version() -> str:
    try:
        import imagecodecs

        return f"imagecodecs {imagecodecs.__version__}"
    except ImportError:
        return "imagecodecs missing"


def _jxl_decode(data: bytes) -> np.ndarray:
    import imagecodecs

    a = np.asarray(imagecodecs.jpegxl_decode(data))
    return a[:, :, None] if a.ndim == 2 else a


CLASSICAL: dict[str, EvalCodec] = {
    c.name: c
    for c in [
        EvalCodec(
            "jpeg",
            "JPEG (Pillow, libjpeg-turbo, 4:2:0)",
            (2, 5, 10, 20, 30, 50, 70, 85, 95),
            _pil_encoder("JPEG"),
            _pil_decode,
            _pil_version("jpg"),
            (1.0, 100.0),
            max_side=65500,  # libjpeg's JPEG_MAX_DIMENSION
        ),
        EvalCodec(
            "webp",
            "WebP (Pillow, libwebp, method 6)",
            (0, 5, 15, 30, 50, 70, 85, 95),
            _pil_encoder("WEBP", method=6),
            _pil_decode,
            _pil_version("webp"),
            max_side=16383,  # WEBP_MAX_DIMENSION
        ),
        EvalCodec(
            "avif",
            "AVIF (Pillow, libavif, speed 6)",
            (2, 10, 25, 40, 55, 70, 85, 95),
            _pil_encoder("AVIF", speed=6),
            _pil_decode,
            _pil_version("avif"),
        ),
        EvalCodec(
            "jxl",
            "JPEG XL (imagecodecs, libjxl, effort 7; quality = distance)",
            (25.0, 16.0, 10.0, 6.0, 4.0, 2.5, 1.5, 1.0, 0.5),
            _jxl_encode,
            _jxl_decode,
            _imagecodecs_version(),
            (0.0, 25.0),
            False,
        ),
        EvalCodec(
            "jpeg2000",
            "JPEG 2000 (Pillow, OpenJPEG, 9/7 wavelet, MCT; quality = compression ratio)",
            (480, 240, 120, 60, 30, 16, 12),
            _jpeg2000_encode,
            _pil_decode,
            _pil_version("jpg_2000"),
            (1.0, 10000.0),
            False,
        ),
    ]
}


def vqz_codec(model: str) -> EvalCodec:
    """One of vqz's own codecs, coded into complete .vqz files."""
    from bitstream import parse, serialize
    from codec.media import Picture
    from codec.registry import codec_for, get_codec

    codec = get_codec(model)
    qualities = tuple(float(q) for q in range(1, codec.levels + 1)) if codec.levels else (0.0,)

    def encode(pixels: np.ndarray, quality: float) -> bytes:
        return serialize(codec.encode([Picture.from_array(pixels)], quality=quality if codec.levels else None)[0])

    def decode(data: bytes) -> np.ndarray:
        container = parse(data)
        return codec_for(container).decode([container])[0].pixels

    return EvalCodec(
        f"vqz:{model}",
        f"vqz {model}: {codec.description}",
        qualities,
        encode,
        decode,
        f"weights {codec.weights_digest.hex()}; {_vqz_code()}",
        (1.0, float(codec.levels)) if codec.levels else None,
        not codec.interpolates,
    )


@functools.cache
def _vqz_code() -> str:
    """What besides the weights decides vqz's bytes and pixels: its code and tables, libraries, the CPU's instructions.

    A digest of every source and table file of the packages that code (a
    change of the coder, or of how a convolution is run, changes files or
    pixels with the same weights: cached results must not outlive it).
    """
    from importlib.metadata import version

    import torch

    import bitstream
    import codec
    import entropy

    digest = hashlib.sha256()
    for package in (bitstream, codec, entropy):
        root = Path(package.__file__).parent
        for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".npz")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    libraries = ", ".join(f"{name} {version(name)}" for name in ("torch", "constriction", "compressai", "numpy"))
    return f"code {digest.hexdigest()[:16]}; {libraries}; CPU {torch.backends.cpu.get_cpu_capability()}"


def resolve(names: Sequence[str]) -> list[EvalCodec]:
    """EvalCodecs for names like 'jpeg', 'webp', 'vqz:hyperprior-gmm'."""
    out = []
    for name in names:
        if name.startswith("vqz:"):
            out.append(vqz_codec(name[4:]))
        elif name in CLASSICAL:
            out.append(CLASSICAL[name])
        else:
            known = ", ".join([*CLASSICAL, "vqz:<model>"])
            raise UnknownCodecError(f"unknown codec {name!r} for eval (known: {known})")
    return out
