"""The header parameters of the tiled learned codecs: quality and tile size.

Seven bytes, little-endian: layout version (u8, 1), quality (f32), tile
size / 64 (u16). Kept apart from codec/tiled.py, and free of torch, so
that `vqz info` shows them without loading a model; the codecs check the
values against their own ranges when they decode.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from entropy import CorruptStreamError

PARAMS = struct.Struct("<BfH")
PARAMS_LAYOUT = 1
ALIGN = 64  # tile sizes are whole multiples of this (the coarsest latents are at 1/64 resolution)


def pack(quality: float, tile: int) -> bytes:
    return PARAMS.pack(PARAMS_LAYOUT, quality, tile // ALIGN)


def unpack(params: bytes, codec_id: str) -> tuple[float, int]:
    """(quality, tile size) as the header holds them; a header of another size or layout is refused."""
    if len(params) != PARAMS.size:
        raise CorruptStreamError(f"{codec_id} parameters must be {PARAMS.size} bytes")
    layout, quality, tile_units = PARAMS.unpack(params)
    if layout != PARAMS_LAYOUT:
        raise CorruptStreamError(f"unknown {codec_id} parameter layout {layout}")
    return quality, tile_units * ALIGN


def describe(params: bytes, codec_id: str) -> dict[str, float | int]:
    """The parameters as plain data (`vqz info`, the encoder's result line)."""
    quality, tile = unpack(params, codec_id)
    if not math.isfinite(quality):  # no encoder writes one; JSON has no NaN
        raise CorruptStreamError(f"quality {quality} is not a number")
    # the shortest decimal that is this float32 (2.3, not 2.299999952316284; 1.6640625 stays whole)
    return {"quality": float(str(np.float32(quality))), "tile_size": tile}
