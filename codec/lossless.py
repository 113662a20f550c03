"""`lossless-delta`: a small exact image codec without weights.

Each channel is predicted from its left neighbour (the first column from the
pixel above); the residuals modulo 256 are range-coded under a static table
of their frequencies, stored in the chunk. It is exact for every 8-bit image
(grey, RGB, RGBA), has no weights, and so its files decode forever: the
golden vectors use it to pin the container and the entropy layer.

Chunk layout (one DATA chunk per channel, in channel order):
256 x uint16 little-endian frequencies, then the coded residuals.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from bitstream import Chunk, ChunkKind, Container
from codec.errors import InvalidRequestError
from codec.media import Picture
from codec.registry import ImageCodec, Progress, device_name
from entropy import CategoricalTable, CorruptStreamError, Decoder, Encoder

_TABLE_BYTES = 256 * 2


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


class LosslessDelta(ImageCodec):
    codec_id = "lossless-delta"
    description = "exact; left-neighbour prediction and static per-channel tables"
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

    def _encode_one(self, picture: Picture) -> Container:
        chunks = []
        for c in range(picture.pixels.shape[2]):
            r = _residuals(picture.pixels[:, :, c])
            table = CategoricalTable.from_counts(np.bincount(r.reshape(-1), minlength=256), total=1 << 15)
            enc = Encoder()
            enc.categorical(r, table)
            chunks.append(Chunk(ChunkKind.DATA, table.frequencies.astype("<u2").tobytes() + enc.finish()))
        return Container(self.codec_id, self.weights_digest, picture.info, b"", chunks, _icc(picture))

    def decode(
        self, containers: Sequence[Container], device: str = "cpu", progress: Progress | None = None
    ) -> list[Picture]:
        device_name(device)
        return _each(self._decode_one, containers, progress)

    def _decode_one(self, container: Container) -> Picture:
        info = container.media
        if container.params:
            raise CorruptStreamError(f"{self.codec_id} files have no codec parameters, this one has some")
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
            planes.append(_reconstruct(residuals.reshape(info.height, info.width)))
        return Picture(np.stack(planes, axis=2), container.metadata.get("icc"))


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
