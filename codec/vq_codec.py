"""`vq-mcq`: the multi-codebook vector-quantised image codec (real coding around VQImageModel).

The latent is quantised coarse to fine in three levels (1/64, 1/32, 1/16
of the image), each level by M codebooks of key-value entries; what a file
stores is the indices. Rate points come from one set of weights:

- how many levels are kept (coarsest first; the others contribute nothing),
- and, for the finest kept level, a smaller codebook derived from the
  trained one by usage-weighted k-means (`MultiCodebookQuantiser.derive`).

The ladder of (levels kept, entries of the finest kept level) is stored in
the weights; `--quality p` picks point p (fractional qualities round down,
so `--target-bpp` still finds the best point under a size).

Indices are range-coded under categorical tables chosen by context
(`IndexContexts`): for codebook m of a level, the group of its co-located
parent (the same codebook's index at the next coarser level, decoded
before) and the group of codebook m-1's index at the same position. The
groups cluster indices whose following indices are alike; they and the
tables' integer frequencies were fitted on training photos at export time
and are stored in the weights, so the decoder needs no floating point to
rebuild them and every machine reads the same indices. Pixels come from
the synthesis transform (hyperprior-gmm's coding-time copy, `frozen`: GDN
as matrix products and sub-pixel convolutions instead of transposed ones,
so they do not depend on the thread count) and the model's post-filter, if it
has one (told the ladder point).

A DATA chunk is one range-coded stream: for each kept level, coarsest
first, for each codebook in order, for each context in order, the indices
of that codebook whose context it is, in raster order.
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bitstream import Container
from codec import weights as shipped
from codec.models.hyperprior import frozen
from codec.models.vq_image import VQImageConfig, VQImageModel, ladder_point
from codec.tiled import TiledImageCodec
from entropy import CategoricalTable, CorruptStreamError, Decoder, Encoder

CODEC_ID = "vq-mcq"


def codebook_key(level: int, entries: int) -> str:
    """How the weights name the codebooks (and tables) of `level` with `entries` entries."""
    return f"{level}/{entries}"


@dataclass(frozen=True)
class IndexContexts:
    """Which table codes each index of one level and codebook size (all M codebooks).

    `parent[m]` maps an index of codebook m at the next coarser level to its
    group (None at the coarsest level); `previous[m]` maps an index of
    codebook m-1 at this level to its group (row 0 is unused: codebook 0 has
    no predecessor). The context is parent group x `previous_groups` +
    previous group: `contexts` tables per codebook.
    """

    parent: np.ndarray | None  # (M, parent entries) -> 0..parent_groups-1
    previous: np.ndarray  # (M, entries) -> 0..previous_groups-1
    parent_groups: int
    previous_groups: int

    @property
    def contexts(self) -> int:
        return self.parent_groups * self.previous_groups

    @classmethod
    def from_state(cls, state: dict) -> "IndexContexts":
        parent = state.get("parent")
        return cls(
            None if parent is None else np.asarray(parent, dtype=np.int64),
            np.asarray(state["previous"], dtype=np.int64),
            int(state["parent_groups"]),
            int(state["previous_groups"]),
        )

    def ids(self, m: int, parent: np.ndarray | None, previous: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
        """Context ids `shape` = (h, w) of codebook m, from the coarser level's indices of codebook m
        (h/2, w/2; None at the coarsest level) and this level's indices of codebook m-1 (None for m = 0)."""
        ids = np.zeros(shape, np.int64)
        if self.parent is not None and parent is not None:
            ids += self.parent[m][parent.repeat(2, axis=0).repeat(2, axis=1)] * self.previous_groups
        if m > 0 and previous is not None:
            ids += self.previous[m][previous]
        return ids


def _code_order(ids: np.ndarray, contexts: int) -> list[tuple[int, np.ndarray]]:
    """(context, raster positions) for every context that occurs, in context order: what the stream holds."""
    flat = ids.reshape(-1)
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(contexts + 1))
    return [(g, order[bounds[g] : bounds[g + 1]]) for g in range(contexts) if bounds[g + 1] > bounds[g]]


class VQCodec(TiledImageCodec):
    codec_id = CODEC_ID
    description = "learned lossy codec, multi-codebook vector quantisation (3 levels), low rates"

    def __init__(self, state: dict, digest: bytes):
        super().__init__(digest)
        self.config = VQImageConfig(**state["config"])
        self.model = VQImageModel(self.config).eval()
        self.model.load_state_dict(state["model"])
        self.model.requires_grad_(False)
        self.ladder = [(int(keep), int(entries)) for keep, entries in np.asarray(state["ladder"])]
        self.levels = len(self.ladder)
        self.default_quality = float(self.levels)
        self.codebooks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {
            codebook_key(level, self.config.entries): (q.keys(), q.values.detach())
            for level, q in enumerate(self.model.quantisers)
        }
        for key, kv in state["derived"].items():
            self.codebooks[key] = (kv["keys"].float(), kv["values"].float())
        if "contexts" not in state:
            raise shipped.WeightsError(f"{CODEC_ID} weights predate index contexts (session 8): export them again")
        # tables[key][m][context]
        self.tables = {
            key: [[CategoricalTable(np.asarray(f, dtype=np.int64)) for f in per_context] for per_context in freqs]
            for key, freqs in state["frequencies"].items()
        }
        self.contexts = {key: IndexContexts.from_state(c) for key, c in state["contexts"].items()}
        for keep, entries in self.ladder:  # a ladder point without its codebook or tables is a broken file
            for level, size in self.codebook_sizes(keep, entries).items():
                key = codebook_key(level, size)
                if key not in self.codebooks or key not in self.tables or key not in self.contexts:
                    raise shipped.WeightsError(f"{CODEC_ID} weights lack codebook {key} or its tables")
                self._check_contexts(level, size)
        self._analysis = frozen(self.model.g_a)
        self._synthesis = frozen(self.model.g_s)
        # The level-up maps are transposed convolutions too: oneDNN's would make the decoded latent (so the
        # pixels) depend on the thread count; the encoder uses the same copies to form its residuals.
        self._up = nn.ModuleList(frozen(nn.Sequential(up)) for up in self.model.up)
        self._devices: dict[str, tuple] = {}

    def _check_contexts(self, level: int, size: int) -> None:
        """Every context a stream can name has its table (else an index would go uncoded, silently)."""
        key, m, full = codebook_key(level, size), self.config.codebooks, self.config.entries
        ctx, tables = self.contexts[key], self.tables[key]
        coarsest = level == self.config.levels - 1
        ok = (
            len(tables) == m
            and all(len(t) == ctx.contexts and all(table.size == size for table in t) for t in tables)
            and ctx.previous.shape == (m, size)
            and 0 <= ctx.previous.min()
            and ctx.previous.max() < ctx.previous_groups
            and (ctx.parent is None) == coarsest
            and (coarsest or (ctx.parent.shape == (m, full) and 0 <= ctx.parent.min() < ctx.parent_groups
                              and ctx.parent.max() < ctx.parent_groups))
        )  # fmt: skip
        if not ok:
            raise shipped.WeightsError(f"{CODEC_ID} weights: the index contexts of codebook {key} do not fit it")

    def codebook_sizes(self, keep: int, entries: int) -> dict[int, int]:
        """Codebook size per kept level (coarsest first) of the ladder point (keep, entries)."""
        top = self.config.levels - 1
        kept = [top - i for i in range(keep)]
        return {level: (entries if level == kept[-1] else self.config.entries) for level in kept}

    def _quality(self, quality: float | None) -> float:
        q = super()._quality(quality)
        return float(math.floor(q))

    def _parse_params(self, container: Container) -> tuple[float, int]:
        q, tile = super()._parse_params(container)
        if q != math.floor(q):  # the encoder writes rate points only
            raise CorruptStreamError(f"{self.codec_id} quality {q} is not a rate point (1..{self.levels})")
        return q, tile

    def _on(self, device: torch.device):
        """(model, analysis, synthesis, level-up maps, codebooks) on `device`, built once."""
        key = str(device)
        if key not in self._devices:
            if device.type == "cpu":  # the loaded copies already are on the CPU
                self._devices[key] = (self.model, self._analysis, self._synthesis, self._up, self.codebooks)
            else:
                books = {k: (kk.to(device), v.to(device)) for k, (kk, v) in self.codebooks.items()}
                parts = (self.model, self._analysis, self._synthesis, self._up)
                self._devices[key] = (*(copy.deepcopy(p).to(device) for p in parts), books)
        return self._devices[key]

    # -- encode ---------------------------------------------------------------
    def _encode_batch(self, x: torch.Tensor, quality: float, device: torch.device) -> list[bytes]:
        model, analysis, _, up, books = self._on(device)
        sizes = self.codebook_sizes(*self.ladder[int(quality) - 1])

        def nearest(level, target):
            keys, values = books[codebook_key(level, sizes[level])]
            q = model.quantisers[level]
            idx = q.nearest(target, keys)
            return q.lookup(idx, values), (level, idx.cpu().numpy())

        def pyramid(x: torch.Tensor) -> list[torch.Tensor]:  # the latent at every level: no rate point's say
            feats = [analysis(x)]
            for down in model.down:
                feats.append(down(feats[-1]))
            return feats

        with torch.no_grad():
            _, coded = model.coarse_to_fine(self._analysed(x, pyramid), nearest, len(sizes), up)
        return [self._write_indices({level: idx[b] for level, idx in coded}, sizes) for b in range(x.shape[0])]

    def _write_indices(self, indices: dict[int, np.ndarray], sizes: dict[int, int]) -> bytes:
        """One tile's stream from its indices (M, h, w) per kept level; `_read_indices` reads it back."""
        enc = Encoder()
        parent = None
        for level, size in sizes.items():  # coarsest first
            key = codebook_key(level, size)
            contexts, idx = self.contexts[key], indices[level]
            for m, tables in enumerate(self.tables[key]):
                ids = contexts.ids(m, None if parent is None else parent[m], idx[m - 1] if m else None, idx[m].shape)
                symbols = idx[m].reshape(-1)
                for g, positions in _code_order(ids, contexts.contexts):
                    enc.categorical(symbols[positions], tables[g])
            parent = idx
        return enc.finish()

    # -- decode ---------------------------------------------------------------
    def _decode_batch(
        self, payloads: Sequence[bytes], qualities: Sequence[float], shape: tuple[int, int], device: torch.device
    ) -> torch.Tensor:
        model, _, synthesis, up, books = self._on(device)
        out: list[torch.Tensor | None] = [None] * len(payloads)
        by_quality: dict[int, list[int]] = {}
        for b, q in enumerate(qualities):  # tiles of one batch may come from files of other qualities
            by_quality.setdefault(int(q), []).append(b)
        for q, members in by_quality.items():
            sizes = self.codebook_sizes(*self.ladder[q - 1])
            parsed = [self._read_indices(payloads[b], sizes, shape) for b in members]
            indices = {level: torch.from_numpy(np.stack([p[level] for p in parsed])).to(device) for level in sizes}

            def lookup(level, _):
                _, values = books[codebook_key(level, sizes[level])]
                return model.quantisers[level].lookup(indices[level], values), None

            with torch.no_grad():
                y_hat, _ = model.coarse_to_fine(None, lookup, len(sizes), up)
                x, _ = model.synthesise(y_hat, ladder_point(*self.ladder[q - 1]), synthesis)
            for i, b in enumerate(members):
                out[b] = x[i]
        return torch.stack(out)

    def _read_indices(self, payload: bytes, sizes: dict[int, int], shape: tuple[int, int]) -> dict[int, np.ndarray]:
        """Indices (M, h, w) per kept level from one tile's stream, checked against the codebook sizes."""
        ph, pw = shape
        dec = Decoder(payload)
        indices: dict[int, np.ndarray] = {}
        parent = None
        for level, size in sizes.items():  # coarsest first
            h, w = ph >> (4 + level), pw >> (4 + level)
            key = codebook_key(level, size)
            contexts = self.contexts[key]
            rows: list[np.ndarray] = []
            for m, tables in enumerate(self.tables[key]):
                ids = contexts.ids(m, None if parent is None else parent[m], rows[m - 1] if m else None, (h, w))
                idx = np.empty(h * w, np.int64)
                for g, positions in _code_order(ids, contexts.contexts):
                    idx[positions] = dec.categorical(tables[g], positions.size)
                if idx.size and (idx.min() < 0 or idx.max() >= size):
                    raise CorruptStreamError(f"level {level} holds an index outside its {size}-entry codebook")
                rows.append(idx.reshape(h, w))
            indices[level] = parent = np.stack(rows)
        return indices


def load_state(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def default_codec() -> VQCodec:
    """The codec with the shipped weights (verified against the manifest)."""
    w = shipped.load(CODEC_ID)
    return VQCodec(load_state(w.data), w.digest)
