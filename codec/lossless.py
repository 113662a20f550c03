"""`lossless-delta`: a small exact image codec without weights.

Three methods, told apart by the codec parameters:
- none (the files of sessions 1-14): each channel predicted from its left
  neighbour (the first column from the pixel above);
- one byte, 2 (what the encoder writes since session 15): each channel
  predicted by the median edge detector of LOCO-I / JPEG-LS from its left,
  upper and upper-left neighbours (the first row from the left, the first
  column from above); in colour pictures red's residual is then coded
  as its difference to green's, and blue's as its difference to the
  mean of red's and green's (the channels' errors move together: on
  Kodak this takes about a quarter off the file); alpha is coded as it
  is. 10.5 instead of 15.1 bits per pixel on Kodak (docs/models.md,
  "lossless-delta");
- one byte, 1: the same with blue's residual against green's alone (1.4%
  larger; written by one commit of session 15 before method 2, and
  decoded as such).
Residuals are taken modulo 256 and range-coded under a static table of
their frequencies, stored in the chunk. Exact for every 8-bit image
(grey, RGB, RGBA); no weights, so its files decode forever: the golden
vectors use it to pin the container and the entropy layer.

Chunk layout (one DATA chunk per channel, in channel order):
256 x uint16 little-endian frequencies, then the coded residuals.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numba
import numpy as np

from bitstream import Chunk, ChunkKind, Container
from codec.errors import InvalidRequestError
from codec.media import Picture
from codec.registry import ImageCodec, Progress, device_name
from entropy import CategoricalTable, CorruptStreamError, Decoder, Encoder

_TABLE_BYTES = 256 * 2
LEFT, MED_GREEN, MED = b"", b"\x01", b"\x02"  # the methods' codec parameters


def _residuals(channel: np.ndarray) -> np.ndarray:
    p = channel.astype(np.int16)
    r = np.empty_like(p)
    r[:, 1:] = p[:, 1:] - p[:, :-1]
    r[1:, 0] = p[1:, 0] - p[:-1, 0]
    r[0, 0] = p[0, 0]
    return (r & 0xFF).astype(np.int32)


def _reconstruct(residuals: np.ndarray) -> np.ndarray:
    first_column = np.cumsum(residuals[:, 0]) & 0xFF
    r = residuals.copy()
    r[:, 0] = first_column
    return (np.cumsum(r, axis=1) & 0xFF).astype(np.uint8)


@numba.njit(cache=True)
def _med(p: np.ndarray, y: int, x: int) -> int:
    """The prediction of pixel (y, x) from its decoded neighbours (always within 0..255)."""
    if y == 0:
        return np.int32(p[0, x - 1]) if x > 0 else 0
    if x == 0:
        return np.int32(p[y - 1, 0])
    a, b, c = np.int32(p[y, x - 1]), np.int32(p[y - 1, x]), np.int32(p[y - 1, x - 1])
    if c >= max(a, b):
        return min(a, b)
    if c <= min(a, b):
        return max(a, b)
    return a + b - c


@numba.njit(cache=True)
def _med_residuals(channel: np.ndarray) -> np.ndarray:
    h, w = channel.shape
    r = np.empty((h, w), np.int32)
    for y in range(h):
        for x in range(w):
            r[y, x] = (np.int32(channel[y, x]) - _med(channel, y, x)) & 0xFF
    return r


@numba.njit(cache=True)
def _med_reconstruct(residuals: np.ndarray) -> np.ndarray:
    h, w = residuals.shape
    p = np.empty((h, w), np.uint8)
    for y in range(h):
        for x in range(w):
            p[y, x] = (_med(p, y, x) + residuals[y, x]) & 0xFF
    return p


def _mean_of(red: np.ndarray, green: np.ndarray) -> np.ndarray:
    """The mean of two residuals taken as signed (-128..127), rounded down: what blue's residual is coded against."""
    return ((((red + 128) & 0xFF) - 128) + (((green + 128) & 0xFF) - 128)) >> 1


def _blue_reference(method: bytes, red: np.ndarray, green: np.ndarray) -> np.ndarray:
    """What blue's residual is coded against: the mean of red's and green's (method 2, 1.4% smaller on six
    Kodak images), or green's (method 1)."""
    return green if method == MED_GREEN else _mean_of(red, green)


def _med_planes(pixels: np.ndarray, method: bytes) -> list[np.ndarray]:
    """The planes methods 1 and 2 code: MED residuals; in colour pictures red's less green's, blue's less
    `_blue_reference`."""
    planes = [_med_residuals(np.ascontiguousarray(pixels[:, :, c])) for c in range(pixels.shape[2])]
    if len(planes) >= 3:
        red, green, blue = planes[:3]
        planes[0], planes[2] = (red - green) & 0xFF, (blue - _blue_reference(method, red, green)) & 0xFF
    return planes


def _med_pixels(planes: list[np.ndarray], method: bytes) -> list[np.ndarray]:
    if len(planes) >= 3:
        green = planes[1]
        red = (planes[0] + green) & 0xFF
        planes = [red, green, (planes[2] + _blue_reference(method, red, green)) & 0xFF, *planes[3:]]
    return [_med_reconstruct(r) for r in planes]


class LosslessDelta(ImageCodec):
    codec_id = "lossless-delta"
    description = "exact; median edge prediction, colour-difference residuals, static per-channel tables"
    lossless = True

    def encode(
        self,
        pictures: Sequence[Picture],
        quality: float | None = None,
        device: str = "cpu",
        progress: Progress | None = None,
    ) -> list[Container]:
        self.check_options(quality, device)
        return _each(self._encode_one, pictures, progress)

    def check_options(
        self, quality: float | None = None, device: object = "cpu", target_bpp: float | None = None
    ) -> None:
        # runs on the CPU whatever the device, but a misspelt one is still an error (the base class's check)
        super().check_options(quality, device, target_bpp)
        if quality is not None:  # accepting and ignoring it would let a user believe it did something
            raise InvalidRequestError(f"{self.codec_id} is exact and has no quality setting")

    def _encode_one(self, picture: Picture, method: bytes = MED) -> Container:
        """Other methods than MED write the files of earlier versions (for tests and `vqz bench lossless`)."""
        if method in (MED, MED_GREEN):
            planes = _med_planes(picture.pixels, method)
        else:
            planes = [_residuals(picture.pixels[:, :, c]) for c in range(picture.pixels.shape[2])]
        chunks = []
        for r in planes:
            table = CategoricalTable.from_counts(np.bincount(r.reshape(-1), minlength=256), total=1 << 15)
            enc = Encoder()
            enc.categorical(r, table)
            chunks.append(Chunk(ChunkKind.DATA, table.frequencies.astype("<u2").tobytes() + enc.finish()))
        return Container(self.codec_id, self.weights_digest, picture.info, method, chunks, _icc(picture))

    def decode(
        self, containers: Sequence[Container], device: str = "cpu", progress: Progress | None = None
    ) -> list[Picture]:
        device_name(device)
        return _each(self._decode_one, containers, progress)

    def _decode_one(self, container: Container) -> Picture:
        info = container.media
        describe(container.params, self.codec_id)  # a method of its, or refused
        if info.bit_depth != 8:
            raise CorruptStreamError(f"{self.codec_id} files hold 8-bit images, not {info.bit_depth}-bit")
        data = container.data_chunks()
        if len(data) != info.channels:
            raise CorruptStreamError(f"{len(data)} data chunks for {info.channels} channels")
        planes = []
        for index, chunk in enumerate(data):
            if len(chunk) < _TABLE_BYTES:
                raise CorruptStreamError(f"chunk {index} is too short to hold its frequency table")
            freqs = np.frombuffer(chunk[:_TABLE_BYTES], "<u2")
            residuals = Decoder(chunk[_TABLE_BYTES:]).categorical(CategoricalTable(freqs), info.pixels)
            if residuals.min() < 0 or residuals.max() > 255:
                raise CorruptStreamError(f"chunk {index} decodes to values outside 0..255")
            planes.append(residuals.reshape(info.height, info.width))
        if container.params == LEFT:
            pixels = [_reconstruct(r) for r in planes]
        else:
            pixels = _med_pixels(planes, container.params)
        return Picture(np.stack(pixels, axis=2), container.metadata.get("icc"))


def describe(params: bytes, codec_id: str) -> dict[str, float | int]:
    """The header's method as plain data (`vqz info`): 0 for left delta, else the parameter byte."""
    if params not in (LEFT, MED_GREEN, MED):
        raise CorruptStreamError(f"{codec_id} parameters {params.hex()!r} name no method of its")
    return {"method": params[0] if params else 0}


def _each(code: Callable, items: Sequence, progress: Progress | None) -> list:
    """code(item) for each item, reporting progress by items (this codec has no tiles)."""
    out = []
    for item in items:
        out.append(code(item))
        if progress:
            progress(len(out), len(items))
    return out


def _icc(picture: Picture) -> dict[str, bytes]:
    return {"icc": picture.icc} if picture.icc else {}
