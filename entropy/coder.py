"""Range coding of integer symbol arrays under vqz's probability models.

One `Encoder` writes one byte string; the matching `Decoder` reads it back by
making the same calls in the same order with the same model parameters. The
coder is constriction's range coder (a queue: first in, first out), so
several arrays under different models can share one stream.

Models:
- `CategoricalTable`: a static table of integer frequencies (codebook
  indices, residuals); stored with a model, device-independent by design.
- Gaussian, Laplace and K-component Gaussian mixtures with per-symbol
  parameters (scalar latents); tables are built by ``entropy.tables``.

Every int32 round-trips under every model: a symbol outside a table's
support is coded as an escape symbol followed by its raw 32 bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import constriction
import numpy as np

from bitstream.errors import VqzError
from entropy import tables

_PER_SYMBOL_TABLE = constriction.stream.model.Categorical(perfect=False)
_RAW16 = constriction.stream.model.Uniform(1 << 16)
# A decoder refuses a stream that is too short for what it decoded: constriction's range decoder
# reads zeros past the end of its data and never says so, so a file whose declared size was
# enlarged, or whose streams were emptied, would otherwise decode to garbage. Each decoded
# symbol costs the coder at least -log2(q) bits, q being constriction's quantised probability:
# 24-bit and leaky, so q is within a few units of 2^-24 of p (for a table p that sums to 1 up to
# float32 rounding), and no symbol of an n-entry table gets more than 1 - (n - 1) 2^-24, the
# others keeping a unit each. So the symbols' summed cost under
# min(1 - (n - 1) 2^-24, SPEND_MARGIN * p + MIN_PROBABILITY) never exceeds the stream's bits
# plus the coder's final state (one word; STREAM_SLACK_BITS allows four) for any stream an
# Encoder wrote: tests/test_entropy.py checks the bound without the slack on long, skewed
# streams. This bounds what a stream can decode by what its bytes could have coded: even the
# most probable symbol of a table costs something, so an empty stream cannot stand for
# millions of symbols (a flat 4096 x 4096 plane coded by lossless-delta needs about 46 bytes).
SPEND_MARGIN = 1.01
MIN_PROBABILITY = 2.0**-20
STREAM_SLACK_BITS = 128
CHUNK_SYMBOLS = 1 << 15  # neighbouring symbols sorted together; tables <= 2^15 x 257 doubles
BLOCK_SYMBOLS = 1 << 10  # symbols per probability table
MAX_TABLE_SIZE = 1 << 16


class EntropyError(VqzError):
    """Entropy coding failed."""


class CorruptStreamError(EntropyError):
    """A coded stream cannot be decoded with the given model (corrupt, truncated, or wrong model)."""


def _as_int32(symbols: np.ndarray) -> np.ndarray:
    a = np.asarray(symbols)
    if a.dtype.kind not in "iub":
        raise TypeError(f"symbols must be integers, not {a.dtype}")
    a = a.reshape(-1)
    if a.size and (a.min() < np.iinfo(np.int32).min or a.max() > np.iinfo(np.int32).max):
        raise ValueError("symbols must fit in int32")
    return a.astype(np.int32, copy=False)


def least_bits(probabilities: np.ndarray, entries: int | np.ndarray) -> np.ndarray:
    """A lower bound on what coding a symbol of probability p of an `entries`-entry table costs.

    See STREAM_SLACK_BITS. In float64: the cap's distance from 1 is below float32's resolution.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    cap = 1.0 - (np.asarray(entries, dtype=np.float64) - 1.0) * 2.0**-24
    return -np.log2(np.minimum(cap, SPEND_MARGIN * p + MIN_PROBABILITY))


@dataclass(frozen=True)
class CategoricalTable:
    """Integer frequencies of the symbols 0..n-1, plus an implicit escape symbol."""

    frequencies: np.ndarray

    def __post_init__(self) -> None:
        f = np.asarray(self.frequencies)
        if f.ndim != 1 or not 1 <= f.size <= MAX_TABLE_SIZE or f.dtype.kind not in "iu" or (f.size and f.min() < 0):
            raise ValueError("frequencies must be a 1-D array of 1..65536 non-negative integers")
        object.__setattr__(self, "frequencies", f.astype(np.int64))
        # Escape gets one count; zero counts still get the coder's minimum probability.
        probs = np.append(f.astype(np.float64), 1.0)
        object.__setattr__(self, "_model", constriction.stream.model.Categorical(probs, perfect=False))
        object.__setattr__(self, "_least_bits", least_bits(probs / probs.sum(), probs.size))

    @classmethod
    def from_counts(cls, counts: np.ndarray, total: int = 1 << 16) -> "CategoricalTable":
        """Frequencies summing to about `total`, every seen symbol at least 1."""
        c = np.asarray(counts, dtype=np.float64)
        f = np.floor(c / max(c.sum(), 1.0) * total).astype(np.int64)
        f[(c > 0) & (f == 0)] = 1
        return cls(f)

    @property
    def size(self) -> int:
        return int(self.frequencies.size)


def _split_parameters(weights, means, scales) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    means = np.asarray(means, dtype=np.float64)
    if means.ndim == 1:
        means = means[:, None]
    scales = np.asarray(scales, dtype=np.float64).reshape(means.shape)
    if weights is None:
        weights = np.ones_like(means)
    weights = np.asarray(weights, dtype=np.float64).reshape(means.shape)
    # Strided views (e.g. a network's (K, n) output seen as (n, K)) are read in place: numba's
    # kernels take any layout, and copying them cost 2 ms per array on a Kodak image.
    return weights, means, scales


class _ParametricPlan:
    """The deterministic part shared by encoder and decoder: quantised parameters, windows, block order."""

    def __init__(self, family: tables.Family, weights, means, scales):
        w, m, s = _split_parameters(weights, means, scales)
        self.family = family
        self.weights, self.means, self.scale_index, self.lo, self.width = tables.plan_parameters(
            w,
            m,
            s,
            s.view(np.int64),
            family.tail_width,
            tables.OCTAVE_MANTISSAS,
            tables.BUCKET_FIRST,
            tables.SCALE_GRID,
        )
        self.n = self.means.shape[0]

    def chunks(self):
        """(rows, escape column of each row, probability tables of its blocks) per chunk.

        Within each run of CHUNK_SYMBOLS neighbouring symbols, symbols are
        grouped by window width (a stable sort: deterministic) into blocks of
        BLOCK_SYMBOLS rows, so each block's table is barely wider than its
        symbols need, while the parameters read stay in cache. The tables of
        a whole chunk are filled by one parallel kernel call; the escape is
        each table's last column. Callers handle a chunk's symbols with one
        vectorised step and only call the coder per block.
        """
        for start in range(0, self.n, CHUNK_SYMBOLS):
            order = np.argsort(self.width[start : start + CHUNK_SYMBOLS], kind="stable")
            rows = start + order
            slots = np.empty_like(order)  # the row of each symbol of the chunk
            slots[order] = np.arange(order.size)
            firsts = np.arange(0, rows.size, BLOCK_SYMBOLS)
            counts = np.minimum(firsts + BLOCK_SYMBOLS, rows.size) - firsts
            columns = self.width[rows[firsts + counts - 1]].astype(np.int64)  # sorted: the last row is the widest
            offsets = np.concatenate([[0], np.cumsum(counts * (columns + 1))])
            flat = np.empty(int(offsets[-1]), np.float32)  # halves the memory traffic; rounding is deterministic
            tables.fill_probabilities(
                self.family.cdf,
                self.family.pairs,
                self.family.limit,
                self.weights,
                self.means,
                self.scale_index,
                tables.SCALE_GRID,
                tables.INVERSE_SCALE_GRID,
                self.lo,
                self.width,
                start,
                slots,
                BLOCK_SYMBOLS,
                columns,
                offsets,
                flat,
            )
            blocks = [flat[offsets[b] : offsets[b + 1]].reshape(counts[b], columns[b] + 1) for b in range(firsts.size)]
            yield rows, np.repeat(columns, counts), blocks


class Encoder:
    """Accumulates coded arrays; `finish()` returns the stream."""

    def __init__(self) -> None:
        self._coder = constriction.stream.queue.RangeEncoder()

    def _escape_payload(self, values: np.ndarray) -> None:
        if values.size:
            raw = values.astype(np.int32).view(np.uint32)
            halves = np.stack([raw >> 16, raw & 0xFFFF], axis=1).reshape(-1).astype(np.int32)
            self._coder.encode(halves, _RAW16)

    def categorical(self, symbols: np.ndarray, table: CategoricalTable) -> None:
        s = _as_int32(symbols)
        escaped = (s < 0) | (s >= table.size)
        idx = np.where(escaped, table.size, s).astype(np.int32)
        self._coder.encode(idx, table._model)
        self._escape_payload(s[escaped])

    def _parametric(self, family: tables.Family, symbols, weights, means, scales) -> None:
        s = _as_int32(symbols)
        plan = _ParametricPlan(family, weights, means, scales)
        if plan.n != s.size:
            raise ValueError(f"{s.size} symbols but {plan.n} parameter sets")
        escapes = []
        for rows, escape, blocks in plan.chunks():
            offset = s[rows].astype(np.int64) - plan.lo[rows]
            escaped = (offset < 0) | (offset >= plan.width[rows])
            idx = np.where(escaped, escape, offset).astype(np.int32)
            first = 0
            for probs in blocks:
                self._coder.encode(idx[first : first + probs.shape[0]], _PER_SYMBOL_TABLE, probs)
                first += probs.shape[0]
            escapes.append(s[rows][escaped])
        self._escape_payload(np.concatenate(escapes) if escapes else np.empty(0, np.int32))

    def gaussian(self, symbols: np.ndarray, means: np.ndarray, scales: np.ndarray) -> None:
        self._parametric(tables.NORMAL, symbols, None, means, scales)

    def laplace(self, symbols: np.ndarray, means: np.ndarray, scales: np.ndarray) -> None:
        self._parametric(tables.LAPLACE, symbols, None, means, scales)

    def mixture(self, symbols: np.ndarray, weights: np.ndarray, means: np.ndarray, scales: np.ndarray) -> None:
        """Gaussian mixture: parameters have shape (n, K), weights summing to 1 per row."""
        self._parametric(tables.NORMAL, symbols, weights, means, scales)

    def finish(self) -> bytes:
        return self._coder.get_compressed().astype("<u4").tobytes()


class Decoder:
    """Reads a stream written by `Encoder`, call for call."""

    def __init__(self, data: bytes) -> None:
        if len(data) % 4:
            raise CorruptStreamError(f"coded stream of {len(data)} bytes is not a whole number of 32-bit words")
        words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        try:
            self._coder = constriction.stream.queue.RangeDecoder(words)
        except Exception as exc:  # constriction raises ValueError/AssertionError on bad data
            raise CorruptStreamError(f"coded stream is invalid: {exc}") from None
        self._budget = 32.0 * words.size + STREAM_SLACK_BITS  # bits the decoded symbols may cost
        self._spent = 0.0

    def _spend(self, bits: float) -> None:
        self._spent += bits
        self._check(0.0)

    def _check(self, more: float) -> None:
        """Refuse the stream if what was decoded, plus `more` still to come, cannot fit in it."""
        if self._spent + more > self._budget:
            raise CorruptStreamError(
                f"coded stream of {(self._budget - STREAM_SLACK_BITS) / 8:.0f} bytes ends before its symbols do "
                "(truncated, or the file declares more than was coded)"
            )

    def _decode(self, *args) -> np.ndarray:
        try:
            return np.asarray(self._coder.decode(*args), dtype=np.int32)
        except Exception as exc:
            raise CorruptStreamError(f"coded stream is corrupt or was coded with another model: {exc}") from None

    def _escape_payload(self, count: int) -> np.ndarray:
        if not count:
            return np.empty(0, np.int32)
        self._check(32.0 * count)  # two raw 16-bit halves each, exactly
        halves = self._decode(_RAW16, 2 * count).astype(np.uint32).reshape(-1, 2)
        self._spend(32.0 * count)
        return ((halves[:, 0] << 16) | halves[:, 1]).view(np.int32)

    def categorical(self, table: CategoricalTable, count: int) -> np.ndarray:
        cost = table._least_bits
        self._check(int(count) * float(cost.min()))  # before the work: a few bytes cannot ask for millions
        idx = self._decode(table._model, int(count))
        self._spend(float(cost[idx].sum()))
        escaped = idx == table.size
        idx[escaped] = self._escape_payload(int(escaped.sum()))
        return idx

    def _parametric(self, family: tables.Family, weights, means, scales) -> np.ndarray:
        plan = _ParametricPlan(family, weights, means, scales)
        out = np.empty(plan.n, np.int32)
        escaped_positions = []
        for rows, escape, blocks in plan.chunks():  # a chunk at a time: a short stream is refused early
            parts = [self._decode(_PER_SYMBOL_TABLE, probs) for probs in blocks]
            idx = np.concatenate(parts)
            chosen = np.concatenate([p[np.arange(i.size), i] for p, i in zip(blocks, parts)])
            self._spend(float(least_bits(chosen, escape + 1).sum()))  # a row's entries: its escape column + 1
            out[rows] = (plan.lo[rows] + idx).astype(np.int32)
            escaped_positions.append(rows[idx == escape])
        where = np.concatenate(escaped_positions) if escaped_positions else np.empty(0, np.int64)
        out[where] = self._escape_payload(where.size)
        return out

    def gaussian(self, means: np.ndarray, scales: np.ndarray) -> np.ndarray:
        return self._parametric(tables.NORMAL, None, means, scales)

    def laplace(self, means: np.ndarray, scales: np.ndarray) -> np.ndarray:
        return self._parametric(tables.LAPLACE, None, means, scales)

    def mixture(self, weights: np.ndarray, means: np.ndarray, scales: np.ndarray) -> np.ndarray:
        return self._parametric(tables.NORMAL, weights, means, scales)
