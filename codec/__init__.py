"""vqz as a library: batched image coding on CPU or GPU.

    import codec
    files = codec.encode(images, quality=6)            # list of .vqz bytes
    pictures = codec.decode(files)                      # list of (H, W, C) uint8 arrays

`images` are (H, W) or (H, W, C) uint8 numpy arrays (C = 1, 3, or 4 for the
lossless codec), paths, or Pillow images (read as an image file is: a
palette becomes RGB, CMYK is refused); the networks run batched on
`device`, entropy coding on the CPU. Errors derive from `codec.VqzError`.
"""

from __future__ import annotations

import os
from typing import Sequence, Union

import numpy as np
from PIL import Image

from bitstream import VqzError, parse, serialize
from codec.errors import InvalidRequestError
from codec.media import Picture, picture_from_pil, read_image
from codec.registry import codec_for, entries, get_codec

ImageLike = Union[np.ndarray, str, os.PathLike, Image.Image]

__all__ = ["VqzError", "Picture", "encode", "decode", "list_codecs", "get_codec"]


def _picture(image: ImageLike) -> Picture:
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        raise InvalidRequestError("images are arrays or paths: give the image file's path, not its bytes")
    if isinstance(image, Image.Image):  # its mode says what the pixels mean; as an array a palette is grey
        return picture_from_pil(image)
    return Picture.from_array(image)


def encode(
    images: Sequence[ImageLike],
    model: str | None = None,
    quality: float | None = None,
    device: str = "cpu",
    target_bpp: float | None = None,
) -> list[bytes]:
    """Encode many images at once; returns one complete .vqz file (bytes) per image.

    `images` is a list, or a (B, H, W, C) array; any array of fewer
    dimensions is refused rather than guessed at (an (H, W, 3) image would
    be read as a batch of its rows): pass a batch of grey images as
    (B, H, W, 1) or as a list. `target_bpp` (instead of `quality`) gives
    each image the highest quality whose whole file is at most that many
    bits per pixel, as `vqz encode --target-bpp` does: a search of several
    encodes per image, so images are then coded one at a time.
    """
    if isinstance(images, (str, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim < 4):
        raise InvalidRequestError("encode takes a list of images; for one image pass [image]")
    if quality is not None and target_bpp is not None:
        raise InvalidRequestError("give quality or target_bpp, not both")
    codec = get_codec(model)
    pictures = [_picture(i) for i in _listed(images, "encode takes a list of images")]
    if target_bpp is not None:
        return [serialize(codec.encode_to_bpp(p, target_bpp, device=device)) for p in pictures]
    return [serialize(c) for c in codec.encode(pictures, quality=quality, device=device)]


def _listed(items: object, message: str) -> list:
    """`items` as a list (any iterable, generators included), or the one-line refusal `message`."""
    try:
        return list(items)  # type: ignore[call-overload]
    except TypeError:
        raise InvalidRequestError(f"{message}, not a {type(items).__name__}") from None


def decode(files: Sequence[bytes], device: str = "cpu") -> list[np.ndarray]:
    """Decode many .vqz files (bytes); files of the same codec are decoded as one batch."""
    if isinstance(files, (bytes, bytearray, memoryview, str, os.PathLike)):
        raise InvalidRequestError("decode takes a list of .vqz files' contents (bytes); for one file pass [data]")
    files = _listed(files, "decode takes a list of .vqz files' contents (bytes)")  # a generator is read once
    for i, f in enumerate(files):
        if not isinstance(f, (bytes, bytearray, memoryview)):
            raise InvalidRequestError(f"files[{i}] is a {type(f).__name__}, not the bytes of a .vqz file")
    containers = [parse(f) for f in files]
    out: list[np.ndarray | None] = [None] * len(containers)
    by_codec: dict[str, list[int]] = {}
    for i, c in enumerate(containers):
        codec_for(c)  # checks codec id and weights digest before any work
        by_codec.setdefault(c.codec_id, []).append(i)
    for codec_id, indices in by_codec.items():
        pictures = get_codec(codec_id).decode([containers[i] for i in indices], device=device)
        for i, p in zip(indices, pictures):
            out[i] = p.pixels
    return out  # type: ignore[return-value]


def list_codecs() -> list[str]:
    """Names of the registered codecs."""
    return [e.name for e in entries()]
