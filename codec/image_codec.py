"""`hyperprior-gmm`: the default lossy image codec (real coding around HyperpriorGMM).

Encode: picture -> tiles (each padded to a multiple of 64) -> analysis on
the chosen device, batched -> rounded latents -> hyper-synthesis on the CPU in
float64 -> Gaussian-mixture tables (entropy layer) -> one DATA chunk per tile.
Decode mirrors it; the decoder rebuilds the tables from the decoded
hyper-latent with the same CPU float64 network, so a file encoded on a GPU
decodes on a CPU. The synthesis is followed by the model's post-filter
(`PostFilter`, since session 10), a decoder-only refinement: the coded
data do not depend on it, only the pixels decoded from them (the weights
digest in the header still names the weights as a whole).

The hyper-synthesis's last convolution runs on integers (``ExactConv2d``,
parameters stored with the weights as ``hyper_head``): exact in float32, so
twice as fast as float64 and reproducible on any CPU.

Tiles, batches, codec parameters and pixels are handled by
``codec.tiled.TiledImageCodec``. A DATA chunk: length of the hyper-latent stream (u32), that stream
(one categorical table per hyper-latent channel), then the latent stream
(Gaussian mixture per element).
"""

from __future__ import annotations

import copy
import io
import math
import struct
from collections.abc import Sequence

import numpy as np
import torch

from codec import weights as shipped
from codec.models.exact_conv import ExactConv2d, ExactConvError, quantise_conv
from codec.models.hyperprior import HyperpriorConfig, HyperpriorGMM, frozen
from codec.tiled import TiledImageCodec
from codec.weights import WeightsError
from entropy import CategoricalTable, CorruptStreamError, Decoder, Encoder

CODEC_ID = "hyperprior-gmm"
# Without -q, the level trained nearest this trade-off (about 0.6 bpp on Kodak): the default stays
# the same operating point when the ladder of levels changes (it grew from 7 to 10 levels).
DEFAULT_LAMBDA = 0.013


def default_quality(lambdas: Sequence[float]) -> float:
    """The 1-based level whose lambda is nearest DEFAULT_LAMBDA (in log scale)."""
    distance = [abs(math.log(lam / DEFAULT_LAMBDA)) for lam in lambdas]
    return float(1 + distance.index(min(distance)))


def _frequencies(probabilities: np.ndarray) -> np.ndarray:
    """Integer frequencies (out of about 2^16) of float64 probabilities, every value at least 1."""
    return np.maximum(np.floor(probabilities * (1 << 16)), 1).astype(np.int64)


def z_frequencies(bottleneck: torch.nn.Module, radius: int) -> np.ndarray:
    """Integer tables (C, 2*radius+1) of the factorized hyper-latent prior, built in float64 on the CPU."""
    eb = copy.deepcopy(bottleneck).double().cpu()
    channels = eb.matrices[0].shape[0]
    values = torch.arange(-radius, radius + 1, dtype=torch.float64).repeat(channels, 1, 1)
    with torch.no_grad():
        pmf = eb._likelihood(values)[0].squeeze(1).clamp_min(0).numpy()
    return _frequencies(pmf)


Z_PRIOR_WEIGHT = 8.0  # pseudo-counts of the factorized prior that smooth each level's counted table
Z_TABLE_CACHE = 32  # qualities whose hyper-latent tables a codec keeps built


def z_level_frequencies(model: HyperpriorGMM, crops: torch.Tensor, radius: int) -> np.ndarray:
    """Integer tables (L, C, 2*radius+1): each level's counted hyper-latents, smoothed towards the factorized prior.

    The factorized prior is one density per channel for every rate level,
    trained on noisy hyper-latents; the coder codes rounded ones, whose
    spread differs a lot between levels. Counting each level's rounded
    hyper-latents on training crops (B, 3, H, W in 0..1; never Kodak) and
    adding Z_PRIOR_WEIGHT pseudo-counts of the prior (so unseen values stay
    cheap enough) cut the hyper-latent's bits by 23% at the lowest level,
    3-6% in the middle and 19% at the top (docs/history.md, "Session 12").
    """
    prior = z_frequencies(model.entropy_bottleneck, radius).astype(np.float64)
    prior /= prior.sum(axis=1, keepdims=True)
    levels, (channels, width) = model.config.levels, prior.shape
    counts = np.zeros((levels, channels, width))
    for level, z in _hyper_latents_by_level(model, crops):
        z = torch.round(z).to(torch.int64) + radius
        bins = (z + width * torch.arange(channels).view(1, -1, 1, 1)).numpy()  # one bin range per channel
        inside = bins[(z >= 0).numpy() & (z < width).numpy()]  # beyond the radius: escape-coded, not counted
        counts[level] += np.bincount(inside, minlength=channels * width).reshape(channels, width)
    p = counts + Z_PRIOR_WEIGHT * prior
    p /= p.sum(axis=2, keepdims=True)
    return _frequencies(p)


def level_frequencies(frequencies: np.ndarray, quality: float) -> np.ndarray:
    """The hyper-latent tables (C, n) for a 1-based quality, from (L, C, n) per-level tables.

    A fractional quality blends its two neighbouring levels' integer
    frequencies linearly (float64 products and a floor: the same integers on
    every machine, as the header's float32 quality is the same).
    """
    position = min(max(float(quality) - 1.0, 0.0), frequencies.shape[0] - 1.0)
    lo = int(math.floor(position))
    t = position - lo
    if t == 0.0:
        return frequencies[lo]
    blend = (1.0 - t) * frequencies[lo].astype(np.float64) + t * frequencies[lo + 1].astype(np.float64)
    return np.maximum(np.floor(blend), 1).astype(np.int64)


def hyper_head(model: HyperpriorGMM, crops: torch.Tensor) -> dict:
    """Integer parameters of the hyper-synthesis's last convolution, calibrated on `crops` at every level.

    The activation range per input channel is the largest magnitude seen
    over the crops (B, 3, H, W in 0..1) at every quality level; the coder
    clamps to it (plus a margin), so the crops should be training photos.
    """
    head = model.h_s[-1]
    peak = torch.zeros(head.in_channels, dtype=torch.float64)
    with torch.no_grad():
        for _, z in _hyper_latents_by_level(model, crops):
            a = model.h_s[:-1](torch.round(z)).to(torch.float64)  # the coder's z: rounded
            peak = torch.maximum(peak, a.abs().amax(dim=(0, 2, 3)))
    return quantise_conv(head, peak)


@torch.no_grad()
def _hyper_latents_by_level(model: HyperpriorGMM, crops: torch.Tensor):
    """(level, hyper-latent before rounding) of every batch of 8 crops at every level (g_a once per batch)."""
    for x in crops.split(8):
        features = model.g_a(x)
        for level in range(model.config.levels):
            yield level, model.latents(features, torch.full((x.shape[0],), float(level)))[1]


class HyperpriorCodec(TiledImageCodec):
    codec_id = CODEC_ID
    description = "learned lossy codec, Gaussian-mixture hyperprior, variable rate"
    interpolates = True  # gains interpolated between levels

    def __init__(self, state: dict, digest: bytes):
        super().__init__(digest)
        config = dict(state["config"])
        config["lambdas"] = tuple(config["lambdas"])
        self.config = HyperpriorConfig(**config)
        self.model = HyperpriorGMM(self.config).eval()
        self.model.load_state_dict(state["model"])
        self.model.requires_grad_(False)
        self.levels = self.config.levels
        self.default_quality = default_quality(self.config.lambdas)
        freqs = np.asarray(state["z_frequencies"])
        # Weights before session 12 have one table set for every level: (C, n).
        if freqs.ndim == 2:
            freqs = freqs[None].repeat(self.levels, axis=0)
        if freqs.ndim != 3 or freqs.shape[:2] != (self.levels, self.config.hyper_channels):
            raise WeightsError(
                f"{CODEC_ID} weights have hyper-latent tables of shape {freqs.shape}, "
                f"not ({self.levels}, {self.config.hyper_channels}, n)"
            )
        self.z_frequencies = freqs
        self.z_radius = (self.z_frequencies.shape[2] - 1) // 2
        self._z_tables: dict[float, list[CategoricalTable]] = {}
        # Everything that feeds a probability table runs here: CPU, float64, the last layer on integers.
        self._hyper_synthesis = copy.deepcopy(self.model.h_s).double()
        try:
            self._hyper_synthesis[-1] = ExactConv2d(state["hyper_head"])
        except (KeyError, ExactConvError) as exc:
            raise WeightsError(f"{CODEC_ID} weights lack a valid integer hyper-synthesis head: {exc}") from None
        self._models: dict[str, HyperpriorGMM] = {"cpu": self.model}
        self._transforms: dict[str, tuple[torch.nn.Module, torch.nn.Module]] = {}

    def z_tables(self, quality: float) -> list[CategoricalTable]:
        """One categorical table per hyper-latent channel for this 1-based quality, built once per quality.

        The quality is taken as the header stores it (float32), so an
        encoder and a decoder given the same file always blend alike.
        """
        quality = float(np.float32(quality))
        if quality not in self._z_tables:
            if len(self._z_tables) >= Z_TABLE_CACHE:  # a long-lived process may see many fractional qualities
                self._z_tables.clear()
            self._z_tables[quality] = [CategoricalTable(f) for f in level_frequencies(self.z_frequencies, quality)]
        return self._z_tables[quality]

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

    def _mixture(self, z_int: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mixture parameters for a batch of hyper-latents, each (B, M*h*w, K), float64.

        The hyper-latents are made channel-major first: the encoder's come
        from the channels-last analysis, the decoder's from a NumPy array,
        and h_s's float64 deconvolutions round their last bits differently
        in the two layouts, which must never reach the integer head's
        rounding on one side only.
        """
        z = z_int.to(torch.float64).contiguous()
        with torch.no_grad():
            w, m, s = self.model.mixture_parameters(z, self._hyper_synthesis)

        def flat(t):
            return t.permute(0, 2, 3, 4, 1).reshape(t.shape[0], -1, t.shape[1]).numpy()

        return flat(w), flat(m), flat(s)

    # -- encode ---------------------------------------------------------------
    def _encode_batch(self, x: torch.Tensor, quality: float, device: torch.device) -> list[bytes]:
        quality_pos = torch.full((x.shape[0],), quality - 1.0, device=device)
        with torch.no_grad():
            y, z = self._on(device).latents(self._analysed(x, self._transforms_on(device)[0]), quality_pos)
        y_int = torch.round(y).to("cpu", torch.int32)
        z_int = torch.round(z).to("cpu", torch.int32)
        weights, means, scales = self._mixture(z_int)
        tables = self.z_tables(quality)
        return [self._code_tile(tables, z_int[b], y_int[b], weights[b], means[b], scales[b]) for b in range(x.shape[0])]

    def _code_tile(self, z_tables, z_int, y_int, weights, means, scales) -> bytes:
        z_enc = Encoder()
        z = z_int.numpy().reshape(z_int.shape[0], -1) + self.z_radius
        for channel, table in zip(z, z_tables):
            z_enc.categorical(channel, table)
        z_stream = z_enc.finish()
        y_enc = Encoder()
        y_enc.mixture(y_int.numpy().reshape(-1), weights, means, scales)
        return struct.pack("<I", len(z_stream)) + z_stream + y_enc.finish()

    # -- decode ---------------------------------------------------------------
    def _decode_batch(
        self, payloads: Sequence[bytes], qualities: Sequence[float], shape: tuple[int, int], device: torch.device
    ) -> torch.Tensor:
        _, synthesis = self._transforms_on(device)
        m, h = self.config.latent_channels, self.config.hyper_channels
        ph, pw = shape
        z_shape = (h, ph // 64, pw // 64)
        z_streams, y_streams = zip(*(_split_payload(p) for p in payloads))
        z_int = torch.stack(
            [torch.from_numpy(self._decode_z(s, z_shape, self.z_tables(q))) for s, q in zip(z_streams, qualities)]
        )
        weights, means, scales = self._mixture(z_int)
        y_int = np.stack(
            [Decoder(s).mixture(weights[b], means[b], scales[b]) for b, s in enumerate(y_streams)]
        ).reshape(len(payloads), m, ph // 16, pw // 16)
        quality_pos = torch.tensor([q - 1.0 for q in qualities], device=device)
        with torch.no_grad():
            return self._on(device).synthesise(
                torch.from_numpy(y_int).to(device, torch.float32), quality_pos, synthesis
            )

    def _decode_z(self, stream: bytes, shape: tuple[int, int, int], tables: list[CategoricalTable]) -> np.ndarray:
        dec = Decoder(stream)
        count = shape[1] * shape[2]
        z = np.stack([dec.categorical(table, count) for table in tables]) - self.z_radius
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


def load_state(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def default_codec() -> HyperpriorCodec:
    """The codec with the shipped weights (verified against the manifest)."""
    w = shipped.load(CODEC_ID)
    return HyperpriorCodec(load_state(w.data), w.digest)
