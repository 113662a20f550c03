"""Multi-codebook vector quantisation with key-value codebooks that stay fully used.

The building block of vqz's VQ codecs (images now, audio later):

- the C channels of a feature map are split into M groups; each group is
  matched to the nearest *key* of its own codebook of K entries (McQuic);
- keys and *values* are separate (Discrete Key-Value Bottleneck): the key
  serves the match, the value is what the synthesis receives, so the
  decoder side can be refined without changing what an index means;
- keys are parameterised through one shared learned linear map of fixed
  random bases (SimVQ), so every key moves when the map learns and none is
  stranded;
- codebooks start from k-means on real encoder outputs, and entries unused
  for a while are restarted on encoder outputs (`restart_dead_entries`);
- the encoder learns through a straight-through estimator plus a
  commitment loss.

The index tensor is what gets entropy-coded; `utilisation()` reports, per
codebook, the fraction of entries used and the perplexity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class Quantised:
    values: torch.Tensor  # (B, C, H, W): what the synthesis receives
    indices: torch.Tensor  # (B, M, H, W), int64
    commitment: torch.Tensor  # scalar loss: pulls encoder outputs and keys together


def kmeans(x: torch.Tensor, k: int, iterations: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
    """k centroids of the rows of x (k-means++-style seeding by random distinct rows, Lloyd steps)."""
    n = x.shape[0]
    if n == 0:
        raise ValueError("k-means needs data")
    pick = torch.randperm(n, generator=generator)[:k]
    if pick.numel() < k:  # fewer points than entries: repeat with jitter
        pick = torch.cat([pick, pick[torch.randint(pick.numel(), (k - pick.numel(),), generator=generator)]])
    centroids = x[pick].clone()
    for _ in range(iterations):
        assign = torch.cdist(x, centroids).argmin(1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1).to(x.dtype)
        empty = counts.squeeze(1) == 0
        centroids = torch.where(empty.unsqueeze(1), centroids, sums / counts.clamp_min(1))
    return centroids


def _weighted_means(x: torch.Tensor, weights: torch.Tensor, assign: torch.Tensor, k: int):
    """Per group 0..k-1: the `weights`-weighted mean of its rows of x, and the group's total weight (k, 1)."""
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, assign, x * weights[:, None])
    mass = torch.zeros(k, dtype=x.dtype, device=x.device).index_add_(0, assign, weights)[:, None]
    return sums / mass.clamp_min(1e-12), mass


def weighted_kmeans(x: torch.Tensor, weights: torch.Tensor, k: int, iterations: int = 25) -> torch.Tensor:
    """k centroids of the rows of x, each row counting `weights` times.

    Deterministic: seeded by the k heaviest rows.
    """
    if k >= x.shape[0]:
        return x.clone()
    centroids = x[torch.argsort(weights, descending=True)[:k]].clone()
    for _ in range(iterations):
        means, mass = _weighted_means(x, weights, torch.cdist(x, centroids).argmin(1), k)
        centroids = torch.where(mass > 0, means, centroids)
    return centroids


class MultiCodebookQuantiser(nn.Module):
    """M codebooks of K key-value entries over a (B, C, H, W) feature map, C = M x group."""

    def __init__(self, channels: int, codebooks: int, entries: int, beta: float = 0.25, decay: float = 0.99):
        super().__init__()
        if channels % codebooks:
            raise ValueError(f"{channels} channels do not split into {codebooks} codebooks")
        self.codebooks, self.entries, self.group = codebooks, entries, channels // codebooks
        self.beta, self.decay = beta, decay
        d = self.group
        # SimVQ: keys = bases @ map; the bases stay fixed, the shared map learns.
        self.register_buffer("bases", torch.randn(codebooks, entries, d) / d**0.5)
        self.key_map = nn.Parameter(torch.eye(d))
        self.values = nn.Parameter(torch.randn(codebooks, entries, d) / d**0.5)
        self.register_buffer("usage", torch.zeros(codebooks, entries))  # EMA of assignments per step
        self.register_buffer("initialised", torch.tensor(False))

    def keys(self) -> torch.Tensor:
        return self.bases @ self.key_map

    def _groups(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (M, B*H*W, group)."""
        b, c, h, w = x.shape
        return (
            x.reshape(b, self.codebooks, self.group, h, w)
            .permute(1, 0, 3, 4, 2)
            .reshape(self.codebooks, -1, self.group)
        )

    def _ungroup(self, g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        b, c, h, w = shape
        return g.reshape(self.codebooks, b, h, w, self.group).permute(1, 0, 4, 2, 3).reshape(b, c, h, w)

    def nearest(self, x: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """Indices (B, M, H, W) of the nearest key of each group (of `keys` (M, K', group) if given)."""
        g = self._groups(x)
        idx = torch.cdist(g, self.keys() if keys is None else keys).argmin(-1)  # (M, N)
        b, _, h, w = x.shape
        return idx.reshape(self.codebooks, b, h, w).permute(1, 0, 2, 3)

    def lookup(self, indices: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        """Values for indices (B, M, H, W) -> (B, C, H, W): the decoder's side (of `values` if given)."""
        values = self.values if values is None else values
        b, m, h, w = indices.shape
        flat = indices.permute(1, 0, 2, 3).reshape(m, -1)
        v = torch.stack([values[i][flat[i]] for i in range(m)])
        return self._ungroup(v, torch.Size((b, m * self.group, h, w)))

    @torch.no_grad()
    def derive(self, entries: int, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Smaller codebooks (keys, values), each (M, entries, group), by k-means of the trained ones.

        A cheaper rate point without retraining ("Extreme Image Compression
        using Fine-tuned VQGANs"): the K keys of each codebook are clustered
        into `entries` groups, weighted by how often each was used
        (`counts`, (M, K)); a group's key and value are the usage-weighted
        means of its members' keys and values.
        """
        if not 1 <= entries < self.entries:
            raise ValueError(f"a derived codebook needs 1..{self.entries - 1} entries, not {entries}")
        keys, values = self.keys(), self.values
        out_k, out_v = [], []
        for i in range(self.codebooks):
            w = counts[i].to(keys.dtype).clamp_min(1e-3)
            centroids = weighted_kmeans(keys[i], w, entries)
            assign = torch.cdist(keys[i], centroids).argmin(1)
            out_k.append(_weighted_means(keys[i], w, assign, entries)[0])
            out_v.append(_weighted_means(values[i], w, assign, entries)[0])
        return torch.stack(out_k), torch.stack(out_v)

    @torch.no_grad()
    def initialise(self, x: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """k-means on encoder outputs: keys (through an identity map) and values start at the centroids."""
        g = self._groups(x.detach())
        centroids = torch.stack([kmeans(g[i], self.entries, generator=generator) for i in range(self.codebooks)])
        self.key_map.copy_(torch.eye(self.group, device=x.device))
        self.bases.copy_(centroids)
        self.values.copy_(centroids)
        self.usage.fill_(1.0 / self.entries)
        self.initialised.fill_(True)

    @torch.no_grad()
    def restart_dead_entries(
        self, x: torch.Tensor, threshold: float = 1e-3, generator: torch.Generator | None = None
    ) -> int:
        """Move entries whose usage EMA fell under threshold / K onto random encoder outputs.

        The new key must come out of the learned map, so the base is solved
        from the wanted key (least squares through the current map).
        Returns how many entries were restarted.
        """
        g = self._groups(x.detach())
        dead = self.usage < threshold / self.entries
        restarted = 0
        pinv = torch.linalg.pinv(self.key_map)
        for i in range(self.codebooks):
            where = dead[i].nonzero().squeeze(1)
            if where.numel() == 0:
                continue
            pick = torch.randint(g.shape[1], (where.numel(),), generator=generator).to(g.device)  # a CPU generator
            wanted = g[i][pick]
            self.bases[i, where] = wanted @ pinv
            self.values[i, where] = wanted
            self.usage[i, where] = 1.0 / self.entries
            restarted += where.numel()
        return restarted

    def forward(self, x: torch.Tensor, codebook: tuple[torch.Tensor, torch.Tensor] | None = None) -> Quantised:
        """Training path; `codebook` (keys, values), each (M, K', group), replaces the own one (e.g. derived)."""
        g = self._groups(x)
        keys, values = (self.keys(), self.values) if codebook is None else codebook
        idx = torch.cdist(g.detach(), keys.detach()).argmin(-1)  # (M, N)
        chosen_keys = torch.gather(keys, 1, idx.unsqueeze(-1).expand(-1, -1, self.group))
        chosen_values = torch.gather(values, 1, idx.unsqueeze(-1).expand(-1, -1, self.group))
        # commitment: the encoder moves toward its key, the key (through the map) toward the encoder
        commitment = self.beta * (g - chosen_keys.detach()).pow(2).mean() + (g.detach() - chosen_keys).pow(2).mean()
        # straight-through: values forward, identity gradient to the encoder
        out = chosen_values + (g - g.detach())
        if self.training and codebook is None:  # usage counts the own entries
            with torch.no_grad():
                counts = torch.zeros_like(self.usage).scatter_add_(1, idx, torch.ones_like(idx, dtype=self.usage.dtype))
                self.usage.mul_(self.decay).add_((1 - self.decay) * counts / idx.shape[1])
        b, _, h, w = x.shape
        indices = idx.reshape(self.codebooks, b, h, w).permute(1, 0, 2, 3)
        return Quantised(self._ungroup(out, x.shape), indices, commitment)

    @staticmethod
    def utilisation(indices: torch.Tensor, entries: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per codebook: fraction of entries used at least once, and perplexity, over (B, M, H, W) indices."""
        m = indices.shape[1]
        flat = indices.permute(1, 0, 2, 3).reshape(m, -1)
        counts = torch.stack([torch.bincount(flat[i], minlength=entries) for i in range(m)]).double()
        used = (counts > 0).double().mean(1)
        p = counts / counts.sum(1, keepdim=True)
        entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(1)
        return used, torch.exp(entropy)
