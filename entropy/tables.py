"""Deterministic probability tables for discretised parametric distributions.

The encoder and the decoder must build bit-identical tables from the same
parameters, on any machine. So the recipe here uses only IEEE float64
arithmetic that every platform rounds identically (+, -, *, /, comparisons,
floor): no exp/erf from the platform's libm, no fused multiply-add (numba
does not contract without fastmath), no reductions whose order depends on
the thread count. The standard normal and Laplace CDFs come from lookup
tables shipped in ``cdf_tables.npz`` (computed once with mpmath, see
tools/make_cdf_tables.py) with linear interpolation.

Parameters are quantised first (means to 1/256, scales up to a fixed
geometric grid, mixture weights to 1/65536) so that values that differ by
float noise upstream still usually give the same table, and so that the
table is a function of a few integers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources

import numba
import numpy as np

CDF_GRID_LIMIT = 16  # the tables cover [-16, 16] standard deviations (or Laplace scales)
CDF_GRID_STEPS_PER_UNIT = 512

MAX_WINDOW = 256  # widest window (symbols) of one table
MEAN_STEPS = 256.0  # means are rounded to multiples of 1/256
WEIGHT_STEPS = 65536.0
MAX_ABS_MEAN = float(1 << 30)

# Scales are rounded up to a geometric grid with 32 steps per octave from
# 2^-4 to 2^12. Built by repeated multiplication from a decimal literal so
# it is the same everywhere (no libm pow).
_OCTAVE_STEP = 1.0218971486541166  # 2 ** (1/32)


def _scale_grid() -> np.ndarray:
    grid = []
    value = 0.0625
    for octave in range(16):
        base = 0.0625 * float(1 << octave)
        value = base
        for _ in range(32):
            grid.append(value)
            value *= _OCTAVE_STEP
    grid.append(0.0625 * float(1 << 16))
    return np.array(grid, dtype=np.float64)


SCALE_GRID = _scale_grid()
OCTAVE_STEPS = SCALE_GRID[:32] * 16.0  # 2^(j/32), j = 0..31, exactly as in the grid
INVERSE_SCALE_GRID = 1.0 / SCALE_GRID


def _load_cdfs() -> np.ndarray:
    with resources.files("entropy").joinpath("cdf_tables.npz").open("rb") as f:
        with np.load(f) as npz:
            return np.stack([npz["normal"], npz["laplace"]]).astype(np.float64)


_CDFS = _load_cdfs()


@dataclass(frozen=True)
class Family:
    """A location-scale family: its CDF table (on [-limit, limit]) and coded window.

    The window covers mean +- tail_width scales; values outside it are
    escape-coded. The normal table stops at 6 (the mass beyond is 1e-9), so
    narrow components cost few evaluations; the Laplace's heavy tails need
    the whole table and a wider window.
    """

    cdf: np.ndarray
    limit: float
    tail_width: float
    # (cdf[q], cdf[q + 1] - cdf[q]) side by side: one cache line per interpolation. The difference
    # computed once here is the same double the kernel computed per lookup: bit-identical tables.
    pairs: np.ndarray


def _family(table: np.ndarray, limit: int, tail_width: float) -> Family:
    cut = (CDF_GRID_LIMIT - limit) * CDF_GRID_STEPS_PER_UNIT
    cdf = np.ascontiguousarray(table[cut : table.size - cut])
    pairs = np.ascontiguousarray(np.stack([cdf[:-1], cdf[1:] - cdf[:-1]], axis=1))
    return Family(cdf, float(limit), tail_width, pairs)


NORMAL = _family(_CDFS[0], 5, 4.5)
LAPLACE = _family(_CDFS[1], 16, 12.0)


@numba.njit(cache=True, inline="always", error_model="numpy")
def _cdf_at(table: np.ndarray, t: float) -> float:
    """CDF at table position t = (x + limit) * STEPS, linearly interpolated."""
    if t <= 0.0:
        return 0.0
    last = table.shape[0] - 1
    if t >= last:
        return 1.0
    q = int(t)
    return table[q] + (t - q) * (table[q + 1] - table[q])


_MANTISSA_MASK = (1 << 52) - 1
_BUCKET_BITS = 10  # the top mantissa bits pick a bucket; each holds at most one grid boundary
OCTAVE_MANTISSAS = np.append(
    (OCTAVE_STEPS.view(np.uint64) & np.uint64(_MANTISSA_MASK)).astype(np.int64), np.int64(1) << 52
)  # index 32: the next octave's first step, above every mantissa
# BUCKET_FIRST[b]: the first step j whose mantissa is >= the bucket's lowest mantissa.
BUCKET_FIRST = np.searchsorted(
    OCTAVE_MANTISSAS, np.arange(1 << _BUCKET_BITS, dtype=np.int64) << (52 - _BUCKET_BITS)
).astype(np.int64)


@numba.njit(cache=True, inline="always", error_model="numpy")
def _scale_index(s: float, bits: int, octave_mantissas: np.ndarray, bucket_first: np.ndarray, top: int) -> int:
    """Index of the first grid value >= s, from the bits of s (exact, no libm).

    For a normal positive double, the biased exponent gives the octave and
    the 52 mantissa bits order the values within it like the values do. The
    grid's steps (2.2%) are wider than a bucket (0.1%), so the bucket's first
    candidate is right or one short: one comparison, no search.
    """
    if not s > 0.0625:  # also NaN
        return 0
    if s >= 4096.0:
        return top
    octave = ((bits >> 52) & 0x7FF) - 1023 + 4  # s in [2^(octave-4), 2^(octave-3))
    mantissa = bits & _MANTISSA_MASK
    j = bucket_first[mantissa >> (52 - _BUCKET_BITS)]
    if octave_mantissas[j] < mantissa:
        j += 1
    return min(octave * 32 + j, top)


@numba.njit(cache=True, parallel=True, error_model="numpy")
def plan_parameters(weights, means, scales, scale_bits, tail_width, octave_mantissas, bucket_first, scale_grid):
    """Quantised parameters and coded windows, all (n, K) or (n,).

    Returns rounded weights, rounded means, scale-grid indices, the first
    symbol of each window and its width.
    """
    n, k = means.shape
    qw = np.empty((n, k), np.float64)
    qm = np.empty((n, k), np.float64)
    qs = np.empty((n, k), np.int32)
    lo = np.empty(n, np.int64)
    width = np.empty(n, np.int16)
    top = scale_grid.shape[0] - 1
    for i in numba.prange(n):
        total = 0.0
        for c in range(k):
            w = weights[i, c]
            if not w > 0.0:  # also catches NaN
                w = 0.0
            w = math.floor(w * WEIGHT_STEPS + 0.5)
            if w < 1.0:
                w = 1.0
            qw[i, c] = w
            total += w
        a = math.inf
        b = -math.inf
        centre = 0.0
        for c in range(k):
            qw[i, c] = qw[i, c] / total
            m = means[i, c]
            if not (m > -MAX_ABS_MEAN):
                m = -MAX_ABS_MEAN
            if m > MAX_ABS_MEAN:
                m = MAX_ABS_MEAN
            m = math.floor(m * MEAN_STEPS + 0.5) / MEAN_STEPS
            qm[i, c] = m
            si = _scale_index(scales[i, c], scale_bits[i, c], octave_mantissas, bucket_first, top)
            qs[i, c] = si
            s = scale_grid[si]
            a = min(a, m - tail_width * s)
            b = max(b, m + tail_width * s)
            centre += qw[i, c] * m
        first = int(math.floor(a))
        w = int(math.ceil(b)) - first + 1
        if w > MAX_WINDOW:
            w = MAX_WINDOW
            first = int(math.floor(centre + 0.5)) - MAX_WINDOW // 2
        lo[i] = first
        width[i] = w
    return qw, qm, qs, lo, width


@numba.njit(cache=True, parallel=True, error_model="numpy")
def fill_probabilities(
    cdf,
    pairs,
    limit,
    weights,
    means,
    scale_index,
    scale_grid,
    inverse_scale_grid,
    lo,
    width,
    first_symbol,
    slots,
    block_rows,
    block_columns,
    block_offsets,
    out,
):
    """Probability tables of many blocks at once, into one flat buffer.

    Symbol i = first_symbol + p of the chunk gets row r = slots[p]; the row
    belongs to block b = r // block_rows, whose table has block_columns[b] + 1
    columns and starts at out[block_offsets[b]]. Entry j < width[i] is
    P(lo[i] + j); the last entry is the mass outside the window (the escape).
    Entries in between stay 0 (the coder still gives them its minimum
    probability). Symbols are visited in their own order, so the parameters
    are read sequentially and only the rows are scattered: 1.2x faster on one
    thread and 1.5x on two than visiting the rows in order (measured, session 4).
    Interpolation reads `pairs` (value and slope side by side) instead of two
    cdf entries: 1.08x faster, the same doubles (session 5).
    """
    k = means.shape[1]
    last = cdf.shape[0] - 1
    for p in numba.prange(slots.shape[0]):
        i = first_symbol + np.int64(p)  # (prange's index is unsigned; keep integer arithmetic)
        r = slots[p]
        b = r // block_rows
        columns = block_columns[b]
        start = block_offsets[b] + (r - b * block_rows) * (columns + 1)
        row = out[start : start + columns + 1]
        for j in range(columns + 1):
            row[j] = 0.0
        wi = width[i]
        base = lo[i]
        inside = 0.0
        for c in range(k):
            w = weights[i, c]
            inv = inverse_scale_grid[scale_index[i, c]]
            step = scale_grid[scale_index[i, c]] * (1.0 / CDF_GRID_STEPS_PER_UNIT)  # 1 / dt, exactly
            # t is the CDF table position of the upper edge of symbol base + j.
            t0 = ((base + 0.5 - means[i, c]) * inv + limit) * CDF_GRID_STEPS_PER_UNIT
            dt = inv * CDF_GRID_STEPS_PER_UNIT
            # Only columns whose upper edge t lies inside the table (0 < t < last)
            # need the interpolation; find them first so the loop has no branches.
            ja = 0
            if t0 <= 0.0:
                ja = min(int(-t0 * step), wi)
            while ja < wi and t0 + ja * dt <= 0.0:
                ja += 1
            jb = wi
            if t0 + (wi - 1) * dt >= last:
                jb = max(ja, min(wi, int((last - t0) * step)))
                while jb < wi and t0 + jb * dt < last:
                    jb += 1
                while jb > ja and t0 + (jb - 1) * dt >= last:
                    jb -= 1
            first = _cdf_at(cdf, t0 + (ja - 1) * dt)
            prev = first
            for j in range(ja, jb):
                t = t0 + j * dt
                q = int(t)
                cur = pairs[q, 0] + (t - q) * pairs[q, 1]
                row[j] += w * (cur - prev)
                prev = cur
            if jb < wi:
                row[jb] += w * (1.0 - prev)
                prev = 1.0
            inside += w * (prev - first)  # the component's mass inside the window (telescoped)
        row[columns] = max(1.0 - inside, 0.0)
