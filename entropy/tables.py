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


def _family(table: np.ndarray, limit: int, tail_width: float) -> Family:
    cut = (CDF_GRID_LIMIT - limit) * CDF_GRID_STEPS_PER_UNIT
    return Family(np.ascontiguousarray(table[cut : table.size - cut]), float(limit), tail_width)


NORMAL = _family(_CDFS[0], 6, 5.0)
LAPLACE = _family(_CDFS[1], 16, 12.0)


@numba.njit(cache=True, inline="always")
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
OCTAVE_MANTISSAS = (OCTAVE_STEPS.view(np.uint64) & np.uint64(_MANTISSA_MASK)).astype(np.int64)


@numba.njit(cache=True, inline="always")
def _scale_index(s: float, bits: int, octave_mantissas: np.ndarray, top: int) -> int:
    """Index of the first grid value >= s, from the bits of s (exact, no libm).

    For a normal positive double, the biased exponent gives the octave and
    the 52 mantissa bits order the values within it like the values do.
    """
    if not s > 0.0625:  # also NaN
        return 0
    if s >= 4096.0:
        return top
    octave = ((bits >> 52) & 0x7FF) - 1023 + 4  # s in [2^(octave-4), 2^(octave-3))
    mantissa = bits & _MANTISSA_MASK
    j, hi = 0, 32  # first j with octave_mantissas[j] >= mantissa (32: the next octave)
    while j < hi:
        mid = (j + hi) // 2
        if octave_mantissas[mid] >= mantissa:
            hi = mid
        else:
            j = mid + 1
    return min(octave * 32 + j, top)


@numba.njit(cache=True, parallel=True)
def plan_parameters(weights, means, scales, scale_bits, tail_width, octave_mantissas, scale_grid):
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
            si = _scale_index(scales[i, c], scale_bits[i, c], octave_mantissas, top)
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


@numba.njit(cache=True, parallel=True)
def fill_probabilities(cdf, limit, weights, means, scale_index, inverse_scale_grid, lo, width,
                       rows, block_rows, block_columns, block_offsets, out):
    """Probability tables of many blocks at once, into one flat buffer.

    Row r of the chunk is symbol i = rows[r]; it belongs to block
    b = r // block_rows, whose table has block_columns[b] + 1 columns and
    starts at out[block_offsets[b]]. Entry j < width[i] is P(lo[i] + j);
    the last entry is the mass outside the window (the escape). Entries in
    between stay 0 (the coder still gives them its minimum probability).
    """
    k = means.shape[1]
    last = cdf.shape[0] - 1
    for r in numba.prange(rows.shape[0]):
        i = rows[r]
        b = r // block_rows
        columns = block_columns[b]
        start = block_offsets[b] + (r - b * block_rows) * (columns + 1)
        row = out[start : start + columns + 1]
        for j in range(columns + 1):
            row[j] = 0.0
        wi = width[i]
        base = lo[i]
        for c in range(k):
            w = weights[i, c]
            inv = inverse_scale_grid[scale_index[i, c]]
            # t is the CDF table position of the upper edge of symbol base + j.
            t0 = ((base + 0.5 - means[i, c]) * inv + limit) * CDF_GRID_STEPS_PER_UNIT
            dt = inv * CDF_GRID_STEPS_PER_UNIT
            # Columns whose upper edge lies below the table contribute nothing.
            j0 = 0
            if t0 <= 0.0:
                j0 = min(int(-t0 / dt), wi)
            prev = _cdf_at(cdf, t0 + (j0 - 1) * dt)
            for j in range(j0, wi):
                t = t0 + j * dt
                if t <= 0.0:
                    continue
                if t >= last:
                    row[j] += w * (1.0 - prev)
                    break
                q = int(t)
                cur = cdf[q] + (t - q) * (cdf[q + 1] - cdf[q])
                row[j] += w * (cur - prev)
                prev = cur
        inside = 0.0
        for j in range(wi):
            inside += row[j]
        row[columns] = max(1.0 - inside, 0.0)
