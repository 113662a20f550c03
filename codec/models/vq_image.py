"""Multi-level, multi-codebook VQ image model (McQuic-style), for the coming `vq` codec.

The analysis transform (shared with the hyperprior model) gives a latent
y at 1/16 resolution; strided convolutions derive coarser feature maps at
1/32 and 1/64. Quantisation runs coarse to fine: the coarsest map is
quantised, upsampled, and each finer level quantises only the residual of
what the coarser ones already explain. The decoder rebuilds the latent the
same way from the indices and runs the synthesis transform.

Rate points without retraining: decoding any *prefix* of the levels
(coarsest first) gives a valid image, and smaller codebooks derived from
the finest kept level's give more points (RATE_LADDER); training samples
a ladder point per batch so every point decodes well. The bits are the indices:
levels x codebooks x positions x log2(entries) before entropy coding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from codec.models.hyperprior import PostFilter, _conv, _deconv, analysis_transform, synthesis_transform
from codec.models.vq import MultiCodebookQuantiser


@dataclass(frozen=True)
class VQImageConfig:
    channels: int = 64  # N: width of the transforms
    latent_channels: int = 96  # M: channels at every level
    levels: int = 3  # at 1/16, 1/32, 1/64 of the image
    codebooks: int = 4  # per level
    entries: int = 256  # per codebook
    commitment: float = 0.25
    post_filter_channels: int = 0  # width of the decoder's post-filter (0: none), one scale set per ladder point
    post_filter_depth: int = 3


# The rate ladder the codec ships, lowest rate first: (levels kept, entries of the finest kept
# level's codebooks; fewer than `entries` are derived by k-means, `MultiCodebookQuantiser.derive`).
RATE_LADDER = ((1, 256), (2, 16), (2, 64), (2, 256), (3, 16), (3, 64), (3, 256))


def ladder_point(keep: int, entries: int) -> int:
    """Position in RATE_LADDER of (levels kept, finest kept codebook size): what the post-filter is told.

    A pair not on the ladder (a model of other sizes) counts as the last
    point that keeps as many levels (or the last of all).
    """
    if (keep, entries) in RATE_LADDER:
        return RATE_LADDER.index((keep, entries))
    same = [i for i, (k, _) in enumerate(RATE_LADDER) if k == keep]
    return same[-1] if same else len(RATE_LADDER) - 1


@dataclass
class VQOutput:
    x_hat: torch.Tensor
    indices: list[torch.Tensor]  # per level, coarsest first, each (B, codebooks, h, w)
    commitment: torch.Tensor
    x_plain: torch.Tensor  # the synthesis's output before any post-filter


class VQImageModel(nn.Module):
    def __init__(self, config: VQImageConfig = VQImageConfig()):
        super().__init__()
        self.config = config
        n, m, levels = config.channels, config.latent_channels, config.levels
        self.g_a = analysis_transform(n, m)
        self.g_s = synthesis_transform(n, m)
        self.down = nn.ModuleList([_conv(m, m, 3, 2) for _ in range(levels - 1)])  # level l -> l+1
        self.up = nn.ModuleList([_deconv(m, m, 3, 2) for _ in range(levels - 1)])  # level l+1 -> l
        self.quantisers = nn.ModuleList(
            [MultiCodebookQuantiser(m, config.codebooks, config.entries, config.commitment) for _ in range(levels)]
        )
        self.post = (
            PostFilter(config.post_filter_channels, config.post_filter_depth, len(RATE_LADDER))
            if config.post_filter_channels
            else None
        )

    def synthesise(
        self, y_hat: torch.Tensor, point: int, g_s: nn.Module | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(image, image before the post-filter) from the latent, for ladder point `point`.

        `g_s` may be `frozen(model.g_s)`, the coder's copy (as for the hyperprior).
        """
        x_plain = (g_s if g_s is not None else self.g_s)(y_hat)
        if self.post is None:
            return x_plain, x_plain
        quality = torch.full((x_plain.shape[0],), float(point), device=x_plain.device)
        return self.post(x_plain, quality), x_plain

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps per level, finest (1/16) first."""
        feats = [self.g_a(x)]
        for down in self.down:
            feats.append(down(feats[-1]))
        return feats

    def coarse_to_fine(self, feats: list[torch.Tensor] | None, values_of, keep: int, up: nn.ModuleList | None = None):
        """Rebuild the finest latent from per-level values; levels beyond `keep` contribute nothing.

        `values_of(level, target)` returns (values, extra) for a level given
        the residual it should explain (None at decode time). `up` may be
        the coder's copies of the level-up maps (`frozen`, which does not
        depend on the thread count); by default the trained ones.
        """
        up = self.up if up is None else up
        levels = self.config.levels
        recon, extras = None, []
        for level in reversed(range(levels)):
            used = levels - level <= keep
            target = None
            if feats is not None:
                target = feats[level] if recon is None else feats[level] - recon
            if used:
                values, extra = values_of(level, target)
                extras.append(extra)
                current = values if recon is None else recon + values
            else:
                current = recon
            if level > 0:
                recon = up[level - 1](current) if current is not None else None
            else:
                recon = current
        return recon, extras

    def forward(
        self, x: torch.Tensor, keep: int | None = None, finest: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> VQOutput:
        """Training path; `keep` levels (coarsest first) are used, all by default.

        `finest` (keys, values) replaces the codebooks of the finest kept
        level, e.g. derived smaller ones, so a decoder learns those rate points too.
        """
        keep = self.config.levels if keep is None else keep
        point = ladder_point(keep, self.config.entries if finest is None else finest[0].shape[-2])
        feats = self.features(x)
        finest_level = self.config.levels - keep

        def quantise(level, target):
            q = self.quantisers[level](target, finest if level == finest_level else None)
            return q.values, (q.indices, q.commitment)

        y_hat, extras = self.coarse_to_fine(feats, quantise, keep)
        indices = [e[0] for e in extras]
        commitment = torch.stack([e[1] for e in extras]).sum()
        x_hat, x_plain = self.synthesise(y_hat, point)
        return VQOutput(x_hat, indices, commitment, x_plain)

    @torch.no_grad()
    def encode_indices(self, x: torch.Tensor, keep: int | None = None) -> list[torch.Tensor]:
        """Indices per used level, coarsest first (what a file stores)."""
        keep = self.config.levels if keep is None else keep
        feats = self.features(x)

        def nearest(level, target):
            idx = self.quantisers[level].nearest(target)
            return self.quantisers[level].lookup(idx), idx

        _, indices = self.coarse_to_fine(feats, nearest, keep)
        return indices

    @torch.no_grad()
    def decode_indices(self, indices: list[torch.Tensor]) -> torch.Tensor:
        """Image from the indices of the first len(indices) levels (coarsest first), full codebooks."""
        levels = self.config.levels
        by_level = {levels - 1 - i: idx for i, idx in enumerate(indices)}
        y_hat, _ = self.coarse_to_fine(None, lambda level, _: (self.quantisers[level].lookup(by_level[level]), None),
                                        len(indices))  # fmt: skip
        return self.synthesise(y_hat, ladder_point(len(indices), self.config.entries))[0]

    @torch.no_grad()
    def initialise_codebooks(self, x: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """k-means on real residual targets, coarse to fine.

        Each level sees the residual of the already initialised coarser ones.
        """

        def init(level, target):
            q = self.quantisers[level]
            q.initialise(target, generator)
            return q.lookup(q.nearest(target)), None

        self.coarse_to_fine(self.features(x), init, self.config.levels)

    @torch.no_grad()
    def restart_dead_entries(
        self, x: torch.Tensor, generator: torch.Generator | None = None, thresholds: Sequence[float] | None = None
    ) -> int:
        """Restart rarely used entries of every level on that level's current residual targets.

        `thresholds[level]` (finest first) is the usage share, as a fraction
        of an even 1/K, under which an entry counts as dead; by default the
        quantiser's own.
        """
        restarted = []

        def restart(level, target):
            q = self.quantisers[level]
            given = {} if thresholds is None else {"threshold": thresholds[level]}
            restarted.append(q.restart_dead_entries(target, generator=generator, **given))
            return q.lookup(q.nearest(target)), None

        self.coarse_to_fine(self.features(x), restart, self.config.levels)
        return sum(restarted)

    def bits(self, height: int, width: int, keep: int | None = None, finest_entries: int | None = None) -> float:
        """Fixed-length size of the indices of a height x width image (multiples of 64).

        `finest_entries`: codebook size of the finest kept level (a derived one), by default the full one.
        """
        keep = self.config.levels if keep is None else keep
        total = 0.0
        for lv in range(self.config.levels - keep, self.config.levels):
            entries = finest_entries if (finest_entries and lv == self.config.levels - keep) else self.config.entries
            positions = (height // (16 << lv)) * (width // (16 << lv))
            total += positions * self.config.codebooks * math.log2(entries)
        return total
