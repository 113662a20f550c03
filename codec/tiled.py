"""The frame shared by vqz's learned image codecs: tiles, batches, parameters, pixels in and out.

A learned codec only says how a batch of equally-sized tiles becomes
payloads (`_encode_batch`) and back (`_decode_batch`); this base class does
the rest the same way for all of them:

- pictures -> RGB (grey is replicated; opaque alpha dropped; transparency
  refused: these codecs have no alpha channel);
- raster-order tiles of at most DEFAULT_TILE pixels, each edge-padded to a
  multiple of ALIGN and coded as its own DATA chunk, so memory is bounded
  and a damaged chunk is found and named;
- tiles of one padded shape go through the networks together, at most
  BATCH_TILES and BATCH_PIXELS at a time (full 1024-pixel tiles go in
  pairs: the activations of four were most of an 8000x8000 photo's peak
  memory);
- codec parameters in the container: quality and tile size
  (codec/tile_params.py);
- decoded tiles are written into the canvas; grey files are averaged back
  to one channel;
- a --target-bpp search encodes a picture several times at other
  qualities; a codec's quality-independent analysis goes through
  `_analysed`, which runs it once per tile for the whole search.
"""

from __future__ import annotations

import abc
import hashlib
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bitstream import Chunk, ChunkKind, Container
from codec.errors import InvalidRequestError, UnsupportedMediaError
from codec.media import Picture
from codec.registry import ImageCodec, Progress, check_device
from codec.tile_params import ALIGN, pack, unpack
from entropy import CorruptStreamError

DEFAULT_TILE = 1024
MAX_TILE = 1024  # the largest tile a file may declare: every encoder so far wrote 1024, and larger
# tiles would let a file past the per-call memory bound (BATCH_PIXELS allows one tile at least)
BATCH_TILES = 4  # tiles per network call, at most...
BATCH_PIXELS = 1 << 21  # ...and (padded) pixels per network call: bounds peak memory


@dataclass(frozen=True)
class Tile:
    top: int
    left: int
    height: int
    width: int

    @property
    def padded(self) -> tuple[int, int]:
        return (-(-self.height // ALIGN) * ALIGN, -(-self.width // ALIGN) * ALIGN)


def tile_grid(height: int, width: int, tile: int) -> list[Tile]:
    """Raster-order tiles of at most tile x tile pixels covering the image."""
    return [
        Tile(top, left, min(tile, height - top), min(tile, width - left))
        for top in range(0, height, tile)
        for left in range(0, width, tile)
    ]


def batch_size(shape: tuple[int, int]) -> int:
    """How many tiles of this padded shape one network call takes (at least one)."""
    return max(1, min(BATCH_TILES, BATCH_PIXELS // (shape[0] * shape[1])))


def batches(items: list, shape) -> Iterator[list]:
    """Groups of items sharing the padded tile shape(item), in first-seen order, `batch_size` at a time."""
    groups: dict = {}
    for it in items:
        groups.setdefault(shape(it), []).append(it)
    for padded, group in groups.items():
        size = batch_size(padded)
        for i in range(0, len(group), size):
            yield group[i : i + size]


def torch_device(device: str | torch.device) -> torch.device:
    return torch.device(check_device(device))


def tile_tensor(rgb: np.ndarray, t: Tile, ph: int, pw: int) -> torch.Tensor:
    """One tile as a (3, ph, pw) float tensor in [0, 1], edge-padded."""
    a = rgb[t.top : t.top + t.height, t.left : t.left + t.width]
    a = np.pad(a, ((0, ph - t.height), (0, pw - t.width), (0, 0)), mode="edge")
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float().div_(255.0)


class TiledImageCodec(ImageCodec):
    """A learned image codec coded tile by tile; subclasses code batches of tiles."""

    default_quality: float = 1.0

    def __init__(self, digest: bytes):
        self._digest = digest
        self._searched: dict[bytes, object] | None = None  # analyses kept while encode_to_bpp searches

    @property
    def weights_digest(self) -> bytes:
        return self._digest

    # -- what a codec provides ------------------------------------------------
    @abc.abstractmethod
    def _encode_batch(self, x: torch.Tensor, quality: float, device: torch.device) -> list[bytes]:
        """Payloads of a batch of tiles (B, 3, ph, pw) in [0, 1], already on `device`."""

    @abc.abstractmethod
    def _decode_batch(
        self, payloads: Sequence[bytes], qualities: Sequence[float], shape: tuple[int, int], device: torch.device
    ) -> torch.Tensor:
        """Tiles (B, 3, ph, pw), about [0, 1], from their payloads."""

    def check_options(
        self, quality: float | None = None, device: object = "cpu", target_bpp: float | None = None
    ) -> None:
        super().check_options(quality, device, target_bpp)
        self._quality(quality)
        check_device(device)

    def _quality(self, quality: float | None) -> float:
        """The quality the header stores (float32-exact, so both sides agree), checked."""
        if quality is not None and (not isinstance(quality, numbers.Real) or isinstance(quality, bool)):  # "3", True
            raise InvalidRequestError(f"quality must be a number, not {quality!r}")
        q = self.default_quality if quality is None else float(quality)
        if not 1.0 <= q <= self.levels:
            raise InvalidRequestError(f"quality must be between 1 and {self.levels}, not {quality}")
        return float(np.float32(q))

    # -- encode ---------------------------------------------------------------
    def encode_to_bpp(
        self, picture: Picture, target_bpp: float, device: str = "cpu", progress: Progress | None = None
    ) -> Container:
        """The base class's search, each tile analysed once for all its attempts (see `_analysed`)."""
        self._searched = {}
        try:
            return super().encode_to_bpp(picture, target_bpp, device, progress)
        finally:
            self._searched = None

    def _analysed(self, x: torch.Tensor, analyse: Callable[[torch.Tensor], object]) -> object:
        """analyse(x), kept for the next attempts while a search runs.

        For the part of encoding that comes before the quality has any say
        (the analysis transform: the gains or the codebooks come after it):
        a Kodak image's hyperprior-gmm search took 1.0 s instead of 1.7, the
        same file. Kept by the tiles' content, shape and device, as a codec
        object may be shared and equal tiles have equal analyses (a flat
        1024 x 512 tile and a flat 512 x 1024 one have the same bytes).
        """
        searched = self._searched
        if searched is None:
            return analyse(x)
        where = f"{tuple(x.shape)} {x.dtype} {x.device}".encode()
        key = hashlib.blake2b(where + x.cpu().numpy().tobytes(), digest_size=16).digest()
        if key not in searched:
            searched[key] = analyse(x)
        return searched[key]

    def rgb(self, picture: Picture) -> np.ndarray:
        """The (H, W, 3) pixels the networks see: grey replicated, opaque alpha dropped, transparency refused."""
        p = picture.without_opaque_alpha().pixels
        if p.shape[2] == 4:
            raise UnsupportedMediaError(
                f"{self.codec_id} does not code transparency; use --model lossless-delta for RGBA images"
            )
        return np.repeat(p, 3, axis=2) if p.shape[2] == 1 else p

    def encode(
        self,
        pictures: Sequence[Picture],
        quality: float | None = None,
        device: str = "cpu",
        progress: Progress | None = None,
    ) -> list[Container]:
        q = self._quality(quality)
        dev = torch_device(device)
        rgb = [self.rgb(p) for p in pictures]
        jobs = [(i, t) for i, a in enumerate(rgb) for t in tile_grid(a.shape[0], a.shape[1], DEFAULT_TILE)]
        payloads: dict[tuple[int, Tile], bytes] = {}
        for batch in batches(jobs, shape=lambda job: job[1].padded):
            ph, pw = batch[0][1].padded
            x = torch.stack([tile_tensor(rgb[i], t, ph, pw) for i, t in batch]).to(dev)
            payloads.update(zip(batch, self._encode_batch(x, q, dev)))
            if progress:
                progress(len(payloads), len(jobs))
        params = pack(q, DEFAULT_TILE)
        out = []
        for i, picture in enumerate(pictures):
            chunks = [Chunk(ChunkKind.DATA, payloads[(i, t)]) for t in tile_grid(*rgb[i].shape[:2], DEFAULT_TILE)]
            metadata = {"icc": picture.icc} if picture.icc else {}
            info = picture.without_opaque_alpha().info  # records 1 or 3 channels: what decodes
            out.append(Container(self.codec_id, self._digest, info, params, chunks, metadata))
        return out

    # -- decode ---------------------------------------------------------------
    def _parse_params(self, container: Container) -> tuple[float, int]:
        q, tile = unpack(container.params, self.codec_id)
        if not (math.isfinite(q) and 1.0 <= q <= self.levels):
            raise CorruptStreamError(f"quality {q} is out of range 1..{self.levels}")
        if not ALIGN <= tile <= MAX_TILE:
            raise CorruptStreamError(f"tile size {tile} is out of range {ALIGN}..{MAX_TILE}")
        if container.media.bit_depth != 8:
            raise CorruptStreamError(f"{self.codec_id} files hold 8-bit images")
        if container.media.channels not in (1, 3):
            raise CorruptStreamError(f"{self.codec_id} files hold 1 or 3 channels, not {container.media.channels}")
        return q, tile

    def decode(
        self, containers: Sequence[Container], device: str = "cpu", progress: Progress | None = None
    ) -> list[Picture]:
        dev = torch_device(device)
        jobs = []  # (container index, tile, quality, payload)
        for i, c in enumerate(containers):
            q, tile = self._parse_params(c)
            data = c.data_chunks()
            count = -(-c.media.height // tile) * -(-c.media.width // tile)
            if len(data) != count:  # checked before the grid is built: a file may declare millions of tiles
                raise CorruptStreamError(f"{len(data)} data chunks for {count} tiles")
            tiles = tile_grid(c.media.height, c.media.width, tile)
            jobs += [(i, t, q, d) for t, d in zip(tiles, data)]
        canvases = [np.empty((c.media.height, c.media.width, 3), np.uint8) for c in containers]
        done = 0
        for batch in batches(jobs, shape=lambda job: job[1].padded):
            x = self._decode_batch([j[3] for j in batch], [j[2] for j in batch], batch[0][1].padded, dev)
            pixels = x.clamp_(0, 1).mul_(255).round_().to("cpu", torch.uint8).permute(0, 2, 3, 1).numpy()
            for b, (i, t, _, _) in enumerate(batch):
                canvases[i][t.top : t.top + t.height, t.left : t.left + t.width] = pixels[b, : t.height, : t.width]
            done += len(batch)
            if progress:
                progress(done, len(jobs))
        out = []
        for c, canvas in zip(containers, canvases):
            if c.media.channels == 1:
                canvas = np.round(canvas.astype(np.float32).mean(axis=2, keepdims=True)).astype(np.uint8)
            out.append(Picture(canvas, c.metadata.get("icc")))
        return out
