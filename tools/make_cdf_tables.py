"""Regenerates entropy/cdf_tables.npz, the CDF lookup tables of the entropy layer.

Run once; the file is committed. The values are computed with mpmath at 40
significant digits and rounded once to float64, so the file is the same on
every machine and does not depend on any platform's libm (whose erf/exp may
differ in the last bit, which would make an encoder and a decoder on two
platforms disagree about a probability table).

    python -m tools.make_cdf_tables
"""

from __future__ import annotations

from pathlib import Path

import mpmath
import numpy as np

from entropy.tables import CDF_GRID_LIMIT, CDF_GRID_STEPS_PER_UNIT

OUT = Path(__file__).resolve().parents[1] / "entropy" / "cdf_tables.npz"


def main() -> None:
    mpmath.mp.dps = 40
    n = 2 * CDF_GRID_LIMIT * CDF_GRID_STEPS_PER_UNIT + 1
    xs = [mpmath.mpf(i) / CDF_GRID_STEPS_PER_UNIT - CDF_GRID_LIMIT for i in range(n)]
    normal = np.array([float(mpmath.ncdf(x)) for x in xs], dtype=np.float64)
    laplace = np.array(
        [float(0.5 * mpmath.exp(x)) if x < 0 else float(1 - 0.5 * mpmath.exp(-x)) for x in xs], dtype=np.float64
    )
    np.savez(OUT, normal=normal, laplace=laplace)
    print(f"wrote {OUT} ({n} points per table)")


if __name__ == "__main__":
    main()
