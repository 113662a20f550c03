"""Variable-rate hyperprior image model with a Gaussian-mixture latent prior.

The transforms follow Ballé et al. 2018 (GDN analysis/synthesis, latent at
1/16 resolution, hyper-latent at 1/64).  The latent's prior is a K-component
Gaussian mixture per element whose weights, means and scales come from the
hyper-synthesis (Cheng et al. 2020 without the serial context model, which
would be too slow to decode on a CPU).

One set of weights covers every rate: a learned per-channel *gain* vector per
quality level scales the latent before rounding and an *inverse gain*
rescales it before synthesis (Cui et al. 2021, "Asymmetric gained deep image
compression").  Fractional qualities interpolate the gains geometrically.

This module is pure PyTorch: `forward()` is the training path (noisy latents,
likelihoods).  Real coding lives in ``codec.image_codec``, which uses
`analyse()`, `mixture_parameters()` and `synthesise()` so that everything that
feeds a probability table is computed on the CPU in float64.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

with warnings.catch_warnings():  # compressai's import warns about torch.jit.script: nothing a user can act on
    warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)
    from compressai.entropy_models import EntropyBottleneck
    from compressai.layers import GDN

from codec.models.stable_conv import StableConv2d, stable

# Rate-distortion trade-offs of the quality levels (MSE on 0..1 images,
# scaled by 255^2 as in CompressAI's training recipe).  Level 1 is the lowest
# rate.  CompressAI's six-level ladder (0.0018..0.0932) only reached
# 0.27-1.06 bpp on Kodak with this small, CPU-trained model, so the ladder
# was extended by two levels below and two above (session 2, see
# docs/models.md) towards the 0.1-1.5 bpp the codec should cover.
DEFAULT_LAMBDAS = (0.00045, 0.0009, 0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.18, 0.35)

SCALE_MIN = 0.11  # smallest standard deviation of a mixture component


@dataclass(frozen=True)
class HyperpriorConfig:
    """Everything that determines the network's shape (stored with the weights)."""

    channels: int = 64  # N: width of the transforms
    latent_channels: int = 96  # M: channels of the coded latent y
    hyper_channels: int = 64  # channels of the hyper-latent z
    mixtures: int = 3  # K: Gaussian components per latent element
    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS
    post_filter_channels: int = 0  # width of the decoder's post-filter (0: none; see PostFilter)
    post_filter_depth: int = 3  # its 3x3 convolutions

    @property
    def levels(self) -> int:
        return len(self.lambdas)


def _conv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


def _deconv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, k, stride=stride, padding=k // 2, output_padding=stride - 1)


def analysis_transform(n: int, m: int) -> nn.Sequential:
    """Image (3 channels) -> m channels at 1/16 resolution: 4 strided 5x5 convolutions, GDN between."""
    return nn.Sequential(_conv(3, n), GDN(n), _conv(n, n), GDN(n), _conv(n, n), GDN(n), _conv(n, m))


def synthesis_transform(n: int, m: int) -> nn.Sequential:
    """m channels at 1/16 resolution -> image: 4 strided 5x5 deconvolutions, IGDN between."""
    return nn.Sequential(
        _deconv(m, n), GDN(n, inverse=True), _deconv(n, n), GDN(n, inverse=True),
        _deconv(n, n), GDN(n, inverse=True), _deconv(n, 3),
    )  # fmt: skip


def interpolate_levels(table: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Rows of a per-level table (levels, ...) at 0-based level positions `quality` (B,), linearly.

    Fractional positions mix the two neighbouring levels' rows; applied to
    logarithms (gains, scales) this is geometric interpolation.
    """
    levels = table.shape[0]
    q = quality.to(table.dtype).clamp(0, levels - 1)
    lo = q.floor().long().clamp(max=levels - 2) if levels > 1 else q.long()
    hi = (lo + 1).clamp(max=levels - 1)
    t = (q - lo.to(q.dtype)).reshape(-1, *([1] * (table.dim() - 1)))
    return (1 - t) * table[lo] + t * table[hi]


class PostFilter(nn.Module):
    """A small residual CNN on the decoded image: part of the decoder, not of the file.

    The synthesis of a codec trained on a 2-core CPU leaves blur and ringing
    that a few convolutions can partly undo (session 10: +0.3 dB at the low
    qualities on held-out photos, little at the top). To stay cheap it works
    at half resolution: the image is pixel-unshuffled into 12 channels, goes
    through `depth` 3x3 convolutions (ReLU between) and is shuffled back as a
    correction added to the input. Each quality level scales the hidden
    channels by its own learned factors (geometrically interpolated, like the
    gains), so one filter serves every rate. The last convolution starts at
    zero: a new filter leaves the image unchanged. Its 3x3 convolutions are
    `StableConv2d`: decoded, their results do not depend on the thread count.
    """

    SHUFFLE = 2

    def __init__(self, channels: int, depth: int, levels: int):
        super().__init__()
        if depth < 2:
            raise ValueError("a post-filter needs at least 2 convolutions")
        outer = 3 * self.SHUFFLE**2
        widths = [outer] + [channels] * (depth - 1) + [outer]
        self.convs = nn.ModuleList(StableConv2d(a, b, 3, padding=1) for a, b in zip(widths[:-1], widths[1:]))
        nn.init.zeros_(self.convs[-1].weight)
        nn.init.zeros_(self.convs[-1].bias)
        self.log_scale = nn.Parameter(torch.zeros(levels, depth - 1, channels))

    def forward(self, x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
        """`x` (B, 3, H, W) with even H and W; `quality` (B,) 0-based level positions."""
        scales = interpolate_levels(self.log_scale, quality).exp()
        h = F.pixel_unshuffle(x, self.SHUFFLE)
        for i, conv in enumerate(self.convs[:-1]):
            h = F.relu(conv(h) * scales[:, i, :, None, None])
        return x + F.pixel_shuffle(self.convs[-1](h), self.SHUFFLE)


def mixture_likelihood(
    y: torch.Tensor, weights: torch.Tensor, means: torch.Tensor, scales: torch.Tensor
) -> torch.Tensor:
    """P(y) for integer-binned y under a Gaussian mixture; component dim is 1.

    ``y`` has shape (B, M, H, W); the parameters have shape (B, K, M, H, W).
    """
    y = y.unsqueeze(1)
    inv = 1.0 / scales
    upper = 0.5 * torch.erfc(-(y + 0.5 - means) * inv / math.sqrt(2.0))
    lower = 0.5 * torch.erfc(-(y - 0.5 - means) * inv / math.sqrt(2.0))
    p = (weights * (upper - lower)).sum(dim=1)
    return p.clamp_min(1e-9)


class MatmulGDN(nn.Module):
    """An inference-only (I)GDN whose normalisation is a matrix product over pixels in channels-last order.

    compressai's GDN computes its normalisation as a 1x1 convolution, and
    oneDNN's convolutions change their summation order with the thread
    count; a matrix product (GEMM split over outputs) does not, so decoded
    pixels do not depend on how many threads decoded them. The pixels are
    the GEMM's rows (channels-last memory, as `frozen` transforms keep
    it): on a Kodak image this runs in about 20 ms where the same product
    over channel-major memory took 35-47 ms (session 13).
    """

    def __init__(self, gdn: GDN):
        super().__init__()
        c = gdn.beta.numel()
        with torch.no_grad():
            gamma = gdn.gamma_reparam(gdn.gamma).reshape(c, c)
            self.register_buffer("gamma_t", gamma.t().contiguous())
            self.register_buffer("beta", gdn.beta_reparam(gdn.beta).reshape(1, c).clone())
        self.inverse = gdn.inverse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(b * h * w, c)  # a view when x is channels-last
        norm = torch.addmm(self.beta, rows * rows, self.gamma_t)
        norm = norm.sqrt_() if self.inverse else norm.rsqrt_()
        return norm.mul_(rows).reshape(b, h, w, c).permute(0, 3, 1, 2)  # channels-last again


class SubPixelDeconv(nn.Module):
    """An inference-only stride-2 transposed convolution (``_deconv``, k = 3 or 5) as a 3x3 convolution and a shuffle.

    Output pixel (2i+a, 2j+b) of ``_deconv(cin, cout, k)`` (padding k // 2)
    sums input pixels i' = i-1..i+1 with kernel taps 2(i-i')+a+k//2: each of
    the four phases (a, b) is an ordinary 3x3 convolution (taps outside
    0..k-1 are zero). `frozen` converts every
    such layer: oneDNN's transposed convolutions change their summation
    order with the thread count (a 64 -> 64 layer gave other results at 3,
    5, 6 and 7 threads than at 1, 2, 4 and 8; session 13), its forward
    convolutions do not. In channels-last memory it is also faster than
    the transposed convolution in channel-major memory (48 vs 89 ms for the
    widest synthesis layer on a Kodak image; 20 vs 37 ms for the RGB one).
    """

    def __init__(self, deconv: nn.ConvTranspose2d):
        super().__init__()
        w = deconv.weight.detach()  # (in, out, k, k)
        cin, cout, k = w.shape[0], w.shape[1], w.shape[2]
        kernel = torch.zeros(2, 2, cout, cin, 3, 3, dtype=w.dtype)
        for a in range(2):
            for b in range(2):
                for di in range(3):
                    for dj in range(3):
                        ky, kx = a + k // 2 + 2 - 2 * di, b + k // 2 + 2 - 2 * dj
                        if 0 <= ky < k and 0 <= kx < k:
                            kernel[a, b, :, :, di, dj] = w[:, :, ky, kx].t()
        self.conv = StableConv2d(cin, 4 * cout, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(kernel.reshape(4 * cout, cin, 3, 3))  # channel (2a + b) * cout + c
            self.conv.bias.copy_(deconv.bias.detach().repeat(4))

    @staticmethod
    def applies(m: nn.Module) -> bool:
        if not isinstance(m, nn.ConvTranspose2d) or m.kernel_size not in ((3, 3), (5, 5)):
            return False
        k = m.kernel_size[0]
        return (
            m.stride == (2, 2) and m.padding == (k // 2, k // 2) and m.output_padding == (1, 1)
            and m.dilation == (1, 1) and m.groups == 1 and m.bias is not None
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Phase-major channels shuffled as rows of channels-last memory.

        F.pixel_shuffle expects channel 4c + 2a + b and, on channels-last
        tensors, took 12 ms for the widest layer of a Kodak image; with the
        phases outermost the shuffle moves whole pixels (2.3 ms).
        """
        phases = self.conv(x)
        n, c4, h, w = phases.shape
        c = c4 // 4
        rows = phases.permute(0, 2, 3, 1).reshape(n, h, w, 2, 2, c)  # a view when channels-last
        out = rows.permute(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, c)  # (n, i, a, j, b, c): one copy
        return out.permute(0, 3, 1, 2)


def _frozen_layer(m: nn.Module) -> nn.Module:
    if isinstance(m, GDN):
        return MatmulGDN(m)
    if SubPixelDeconv.applies(m):
        return SubPixelDeconv(m)
    if type(m) is nn.Conv2d:
        return stable(m)
    return copy.deepcopy(m)


class ChannelsLast(nn.Module):
    """Puts a tensor in channels-last memory (the layout `frozen` transforms compute in)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)


def frozen(transform: nn.Sequential) -> nn.Sequential:
    """An inference copy of a transform: (I)GDN as matrix products, every deconvolution sub-pixel, channels-last.

    Decoded with it, pixels do not depend on the thread count (every
    convolution a `StableConv2d`, oneDNN's at any size); it is also
    faster: on a Kodak image with this machine's two cores, the synthesis
    takes 126 ms and the analysis 96 ms, where session 12's channel-major
    copies took 165 and 113 ms (medians of 15, session 13). Its output is
    channels-last: a caller whose next step depends on the memory layout
    makes it contiguous (as `HyperpriorCodec._mixture` does for h_s).
    """
    layers = [ChannelsLast(), *(_frozen_layer(m) for m in transform)]
    return nn.Sequential(*layers).to(memory_format=torch.channels_last).eval().requires_grad_(False)


class HyperpriorGMM(nn.Module):
    """Analysis/synthesis transforms, gain units and the hyperprior networks."""

    def __init__(self, config: HyperpriorConfig = HyperpriorConfig()):
        super().__init__()
        self.config = config
        n, m, h, k = config.channels, config.latent_channels, config.hyper_channels, config.mixtures
        self.g_a = analysis_transform(n, m)
        self.g_s = synthesis_transform(n, m)
        self.h_a = nn.Sequential(
            _conv(m, n, 3, 1),
            nn.LeakyReLU(inplace=True),
            _conv(n, n),
            nn.LeakyReLU(inplace=True),
            _conv(n, h),
        )
        self.h_s = nn.Sequential(
            _deconv(h, n),
            nn.LeakyReLU(inplace=True),
            _deconv(n, n * 3 // 2),
            nn.LeakyReLU(inplace=True),
            _conv(n * 3 // 2, 3 * k * m, 3, 1),
        )
        self.entropy_bottleneck = EntropyBottleneck(h)
        levels = config.levels
        # Log-gains, initialised so that higher levels quantise more finely.
        init = torch.linspace(math.log(0.5), math.log(3.0), levels)
        self.log_gain = nn.Parameter(init[:, None].repeat(1, m).clone())
        self.log_inverse_gain = nn.Parameter(-init[:, None].repeat(1, m).clone())
        self.post = (
            PostFilter(config.post_filter_channels, config.post_filter_depth, levels)
            if config.post_filter_channels
            else None
        )

    # -- gains -------------------------------------------------------------
    def gains(self, quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample (gain, inverse gain), shape (B, M, 1, 1).

        ``quality`` holds 0-based level positions; fractional values
        interpolate geometrically between neighbouring levels.
        """
        log_g = interpolate_levels(self.log_gain, quality)
        log_ig = interpolate_levels(self.log_inverse_gain, quality)
        return log_g.exp()[:, :, None, None], log_ig.exp()[:, :, None, None]

    # -- pieces used by real coding ----------------------------------------
    def analyse(
        self, x: torch.Tensor, quality: torch.Tensor, g_a: nn.Module | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled latent y (before rounding) and hyper-latent z (before rounding).

        `g_a` may be `frozen(model.g_a)`, the faster coding-time copy.
        """
        return self.latents((g_a or self.g_a)(x), quality)

    def latents(self, features: torch.Tensor, quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`analyse` from the analysis transform's output, which is the same at every quality level."""
        gain, _ = self.gains(quality)
        y = features * gain
        return y, self.h_a(y)

    def mixture_parameters(
        self, z_hat: torch.Tensor, h_s: nn.Module | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mixture (weights, means, scales), each (B, K, M, H, W), from the hyper-latent.

        `h_s` may be a coding-time copy of `self.h_s` (the coder's float64 one
        with its integer last layer): the coder keeps only that network in
        float64, not the whole model.
        """
        k, m = self.config.mixtures, self.config.latent_channels
        out = (h_s if h_s is not None else self.h_s)(z_hat)
        b, _, hh, ww = out.shape
        out = out.view(b, 3, k, m, hh, ww)
        weights = torch.softmax(out[:, 0], dim=1)
        means = out[:, 1]
        scales = F.softplus(out[:, 2]) + SCALE_MIN
        return weights, means, scales

    def synthesise(
        self, y_hat: torch.Tensor, quality: torch.Tensor, g_s: nn.Module | None = None, post: bool = True
    ) -> torch.Tensor:
        """Reconstruction from the rounded latent; `g_s` may be `frozen(model.g_s)`.

        The post-filter, if the model has one, runs unless `post` is False.
        """
        _, inverse_gain = self.gains(quality)
        x_hat = (g_s or self.g_s)(y_hat * inverse_gain)
        return self.post(x_hat, quality) if post and self.post is not None else x_hat

    # -- training -------------------------------------------------------------
    def forward(self, x: torch.Tensor, quality: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training path: reconstruction (and, as "x_plain", before any post-filter) plus the likelihoods of y and z.

        The rate uses additive uniform noise; the synthesis sees the rounded
        latent through a straight-through estimator (mixed quantisation,
        Minnen & Singh 2020), which is what the decoder will really see.
        """
        y, z = self.analyse(x, quality)
        z_tilde, z_likelihoods = self.entropy_bottleneck(z)
        weights, means, scales = self.mixture_parameters(z_tilde)
        if self.training:
            y_noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5)
            y_ste = y + (torch.round(y) - y).detach()
        else:
            y_noisy = y_ste = torch.round(y)
        y_likelihoods = mixture_likelihood(y_noisy, weights, means, scales)
        x_plain = self.synthesise(y_ste, quality, post=False)
        x_hat = self.post(x_plain, quality) if self.post is not None else x_plain
        return {"x_hat": x_hat, "x_plain": x_plain, "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
