"""`hyperprior-gmm`: the default lossy image codec (real coding around HyperpriorGMM).

Encode: picture -> tiles (each padded to a multiple of 64) -> analysis on
the chosen device, batched -> rounded latents -> hyper-synthesis on the CPU in
float64 -> Gaussian-mixture tables (entropy layer) -> one DATA chunk per tile.
Decode mirrors it; the decoder rebuilds the tables from the decoded
hyper-latent with the same CPU float64 network, so a file encoded on a GPU
decodes on a CPU.

Codec parameters in the container (7 bytes, little-endian):
layout version (u8, 1), quality (f32, 1..levels), tile size / 64 (u16).
A DATA chunk: length of the hyper-latent stream (u32), that stream
(one categorical table per hyper-latent channel), then the latent stream
(Gaussian mixture per element).
"""

from __future__ import annotations

import copy
import io
import math
import struct
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from bitstream import Chunk, ChunkKind, Container
from codec import weights as shipped
from codec.errors import InvalidRequestError, UnsupportedMediaError
from codec.media import Picture
from codec.models.hyperprior import HyperpriorConfig, HyperpriorGMM, frozen
from codec.registry import ImageCodec
from entropy import CategoricalTable, CorruptStreamError, Decoder, Encoder

CODEC_ID = "hyperprior-gmm"
PARAMS = struct.Struct("<BfH")
PARAMS_LAYOUT = 1
DEFAULT_TILE = 1024
ALIGN = 64  # the hyper-latent is at 1/64 resolution
BATCH_TILES = 4  # tiles per network call: bounds peak memory
DEFAULT_QUALITY = 4.0


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


def _batches(items: list, key) -> Iterator[list]:
    """Groups of at most BATCH_TILES items sharing key(item), in first-seen order."""
    groups: dict = {}
    for it in items:
        groups.setdefault(key(it), []).append(it)
    for group in groups.values():
        for i in range(0, len(group), BATCH_TILES):
            yield group[i : i + BATCH_TILES]


def _device(name: str) -> torch.device:
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise InvalidRequestError(f"unknown device {name!r} (cpu or cuda)")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidRequestError("--device cuda was asked for, but no CUDA device is available")
    return torch.device(name)


def z_frequencies(bottleneck: torch.nn.Module, radius: int) -> np.ndarray:
    """Integer tables (C, 2*radius+1) of the factorized hyper-latent prior, built in float64 on the CPU."""
    eb = copy.deepcopy(bottleneck).double().cpu()
    channels = eb.matrices[0].shape[0]
    values = torch.arange(-radius, radius + 1, dtype=torch.float64).repeat(channels, 1, 1)
    with torch.no_grad():
        pmf = eb._likelihood(values)[0].squeeze(1).clamp_min(0).numpy()
    return np.maximum(np.floor(pmf * (1 << 16)), 1).astype(np.int64)


class HyperpriorCodec(ImageCodec):
    codec_id = CODEC_ID
    description = "learned lossy codec, Gaussian-mixture hyperprior, variable rate"

    def __init__(self, state: dict, digest: bytes):
        config = dict(state["config"])
        config["lambdas"] = tuple(config["lambdas"])
        self.config = HyperpriorConfig(**config)
        self.model = HyperpriorGMM(self.config).eval()
        self.model.load_state_dict(state["model"])
        self.model.requires_grad_(False)
        self.levels = self.config.levels
        self._digest = digest
        freqs = np.asarray(state["z_frequencies"])
        self.z_radius = (freqs.shape[1] - 1) // 2
        self.z_tables = [CategoricalTable(f) for f in freqs]
        # Everything that feeds a probability table runs here: CPU, float64.
        self._hyper_synthesis = copy.deepcopy(self.model).double()
        self._models: dict[str, HyperpriorGMM] = {"cpu": self.model}
        self._transforms: dict[str, tuple[torch.nn.Module, torch.nn.Module]] = {}

    @property
    def weights_digest(self) -> bytes:
        return self._digest

    def _on(self, device: torch.device) -> HyperpriorGMM:
        key = str(device)
        if key not in self._models:
            self._models[key] = copy.deepcopy(self.model).to(device)
        return self._models[key]

    def _transforms_on(self, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
        """(analysis, synthesis) coding-time copies on `device`, built once."""
        key = str(device)
        if key not in self._transforms:
            self._transforms[key] = (frozen(self.model.g_a).to(device), frozen(self.model.g_s).to(device))
        return self._transforms[key]

    # -- shared pieces --------------------------------------------------------
    def _mixture(self, z_int: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mixture parameters for a batch of hyper-latents, each (B, M*h*w, K), float64."""
        with torch.no_grad():
            w, m, s = self._hyper_synthesis.mixture_parameters(z_int.to(torch.float64))
        flat = lambda t: t.permute(0, 2, 3, 4, 1).reshape(t.shape[0], -1, t.shape[1]).numpy()
        return flat(w), flat(m), flat(s)

    def _quality(self, quality: float | None) -> float:
        q = DEFAULT_QUALITY if quality is None else float(quality)
        if not 1.0 <= q <= self.levels:
            raise InvalidRequestError(f"quality must be between 1 and {self.levels}, not {quality}")
        return float(np.float32(q))  # what the header stores, so encoder and decoder use the same gains

    # -- encode ---------------------------------------------------------------
    def _prepare(self, picture: Picture) -> np.ndarray:
        p = picture.without_opaque_alpha().pixels
        if p.shape[2] == 4:
            raise UnsupportedMediaError(
                f"{self.codec_id} does not code transparency; use --model lossless-delta for RGBA images"
            )
        return np.repeat(p, 3, axis=2) if p.shape[2] == 1 else p

    def encode(self, pictures: Sequence[Picture], quality: float | None = None, device: str = "cpu") -> list[Container]:
        q = self._quality(quality)
        dev = _device(device)
        model = self._on(dev)
        analysis, _ = self._transforms_on(dev)
        rgb = [self._prepare(p) for p in pictures]
        jobs = [(i, t) for i, a in enumerate(rgb) for t in tile_grid(a.shape[0], a.shape[1], DEFAULT_TILE)]
        payloads: dict[tuple[int, Tile], bytes] = {}
        for batch in _batches(jobs, key=lambda job: job[1].padded):
            ph, pw = batch[0][1].padded
            x = torch.stack([_tile_tensor(rgb[i], t, ph, pw) for i, t in batch]).to(dev)
            quality_pos = torch.full((len(batch),), q - 1.0, device=dev)
            with torch.no_grad():
                y, z = model.analyse(x, quality_pos, analysis)
            y_int = torch.round(y).to("cpu", torch.int32)
            z_int = torch.round(z).to("cpu", torch.int32)
            weights, means, scales = self._mixture(z_int)
            for b, job in enumerate(batch):
                payloads[job] = self._code_tile(z_int[b], y_int[b], weights[b], means[b], scales[b])
        params = PARAMS.pack(PARAMS_LAYOUT, q, DEFAULT_TILE // ALIGN)
        out = []
        for i, picture in enumerate(pictures):
            chunks = [Chunk(ChunkKind.DATA, payloads[(i, t)]) for t in tile_grid(*rgb[i].shape[:2], DEFAULT_TILE)]
            metadata = {"icc": picture.icc} if picture.icc else {}
            info = picture.without_opaque_alpha().info  # records 1 or 3 channels: what decodes
            out.append(Container(self.codec_id, self._digest, info, params, chunks, metadata))
        return out

    def _code_tile(self, z_int, y_int, weights, means, scales) -> bytes:
        z_enc = Encoder()
        z = z_int.numpy().reshape(z_int.shape[0], -1) + self.z_radius
        for channel, table in zip(z, self.z_tables):
            z_enc.categorical(channel, table)
        z_stream = z_enc.finish()
        y_enc = Encoder()
        y_enc.mixture(y_int.numpy().reshape(-1), weights, means, scales)
        return struct.pack("<I", len(z_stream)) + z_stream + y_enc.finish()

    # -- decode ---------------------------------------------------------------
    def _parse_params(self, container: Container) -> tuple[float, int]:
        if len(container.params) != PARAMS.size:
            raise CorruptStreamError(f"{self.codec_id} parameters must be {PARAMS.size} bytes")
        layout, q, tile_units = PARAMS.unpack(container.params)
        if layout != PARAMS_LAYOUT:
            raise CorruptStreamError(f"unknown {self.codec_id} parameter layout {layout}")
        if not (math.isfinite(q) and 1.0 <= q <= self.levels):
            raise CorruptStreamError(f"quality {q} is out of range 1..{self.levels}")
        if not 1 <= tile_units <= 64:
            raise CorruptStreamError(f"tile size {tile_units * ALIGN} is out of range")
        if container.media.bit_depth != 8:
            raise CorruptStreamError(f"{self.codec_id} files hold 8-bit images")
        return q, tile_units * ALIGN

    def decode(self, containers: Sequence[Container], device: str = "cpu") -> list[Picture]:
        dev = _device(device)
        model = self._on(dev)
        _, synthesis = self._transforms_on(dev)
        jobs = []  # (container index, tile, quality, payload)
        for i, c in enumerate(containers):
            q, tile = self._parse_params(c)
            tiles = tile_grid(c.media.height, c.media.width, tile)
            data = c.data_chunks()
            if len(data) != len(tiles):
                raise CorruptStreamError(f"{len(data)} data chunks for {len(tiles)} tiles")
            jobs += [(i, t, q, d) for t, d in zip(tiles, data)]
        canvases = [np.empty((c.media.height, c.media.width, 3), np.uint8) for c in containers]
        m, h = self.config.latent_channels, self.config.hyper_channels
        for batch in _batches(jobs, key=lambda job: job[1].padded):
            ph, pw = batch[0][1].padded
            z_shape = (h, ph // ALIGN, pw // ALIGN)
            z_streams, y_streams = zip(*(_split_payload(job[3]) for job in batch))
            z_int = torch.stack([torch.from_numpy(self._decode_z(s, z_shape)) for s in z_streams])
            weights, means, scales = self._mixture(z_int)
            y_int = np.stack(
                [Decoder(s).mixture(weights[b], means[b], scales[b]) for b, s in enumerate(y_streams)]
            ).reshape(len(batch), m, ph // 16, pw // 16)
            quality_pos = torch.tensor([job[2] - 1.0 for job in batch], device=dev)
            with torch.no_grad():
                x = model.synthesise(torch.from_numpy(y_int).to(dev, torch.float32), quality_pos, synthesis)
            pixels = x.clamp_(0, 1).mul_(255).round_().to("cpu", torch.uint8).permute(0, 2, 3, 1).numpy()
            for b, (i, t, _, _) in enumerate(batch):
                canvases[i][t.top : t.top + t.height, t.left : t.left + t.width] = pixels[b, : t.height, : t.width]
        out = []
        for c, canvas in zip(containers, canvases):
            if c.media.channels == 1:
                canvas = np.round(canvas.astype(np.float32).mean(axis=2, keepdims=True)).astype(np.uint8)
            elif c.media.channels == 4:
                raise CorruptStreamError(f"{self.codec_id} files cannot hold 4 channels")
            out.append(Picture(canvas, c.metadata.get("icc")))
        return out

    def _decode_z(self, stream: bytes, shape: tuple[int, int, int]) -> np.ndarray:
        dec = Decoder(stream)
        count = shape[1] * shape[2]
        z = np.stack([dec.categorical(table, count) for table in self.z_tables]) - self.z_radius
        return z.reshape(shape).astype(np.int32)


def _split_payload(payload: bytes) -> tuple[bytes, bytes]:
    if len(payload) < 4:
        raise CorruptStreamError("tile chunk is too short")
    (z_len,) = struct.unpack_from("<I", payload)
    if z_len > len(payload) - 4:
        raise CorruptStreamError(
            f"tile chunk declares a {z_len}-byte hyper-latent stream, it has {len(payload) - 4} bytes"
        )
    return payload[4 : 4 + z_len], payload[4 + z_len :]


def _tile_tensor(rgb: np.ndarray, t: Tile, ph: int, pw: int) -> torch.Tensor:
    """One tile as a (3, ph, pw) float tensor in [0, 1], edge-padded."""
    a = rgb[t.top : t.top + t.height, t.left : t.left + t.width]
    a = np.pad(a, ((0, ph - t.height), (0, pw - t.width), (0, 0)), mode="edge")
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float().div_(255.0)


def load_state(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def default_codec() -> HyperpriorCodec:
    """The codec with the shipped weights (verified against the manifest)."""
    w = shipped.load(CODEC_ID)
    return HyperpriorCodec(load_state(w.data), w.digest)
