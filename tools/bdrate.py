"""Bjøntegaard deltas between two rate-distortion curves.

BD-rate: the average difference of log-rate at equal quality, over the
quality range both curves cover, as a percentage (negative: the test codec
needs fewer bits). BD-PSNR: the average quality difference at equal
log-rate. Both integrate piecewise cubic (PCHIP, monotone) interpolants, as
in the common modern implementations, rather than Bjøntegaard's original
global cubic fit, which overshoots on curves with many points.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from bitstream.errors import VqzError

#: The quality curves a results file may carry (CompressAI's schema; "psnr" in its older files).
QUALITY_METRICS = ("psnr-rgb", "psnr", "ms-ssim", "ms-ssim-db")


class CurvesDoNotOverlapError(VqzError):
    """The two curves share no quality (or rate) range, so no delta is defined."""


def _prepare(rate: Sequence[float], quality: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(rate, dtype=np.float64)
    q = np.asarray([np.nan if v is None else v for v in quality], dtype=np.float64)  # null: undefined here
    keep = np.isfinite(r) & np.isfinite(q) & (r > 0)
    r, q = r[keep], q[keep]
    if r.size < 2:
        raise ValueError("a curve needs at least two points with a positive rate and a defined quality")
    order = np.argsort(q)
    return np.log(r[order]), q[order]


def _average_difference(x1, y1, x2, y2, what: str) -> float:
    """Mean of y2(x) - y1(x) over the common x range; x must be strictly increasing."""
    for x in (x1, x2):
        if np.any(np.diff(x) <= 0):
            raise ValueError(f"a curve is not monotonic in {what}")
    lo, hi = max(x1[0], x2[0]), min(x1[-1], x2[-1])
    if not hi > lo:
        shown = np.exp if what == "rate" else float  # rates are integrated in log-bpp, shown in bpp
        raise CurvesDoNotOverlapError(
            f"the curves do not overlap in {what} ([{shown(x1[0]):.3g}, {shown(x1[-1]):.3g}] "
            f"vs [{shown(x2[0]):.3g}, {shown(x2[-1]):.3g}])"
        )
    from scipy.interpolate import PchipInterpolator  # here: `vqz` imports this module to list the metrics

    i1 = PchipInterpolator(x1, y1).integrate(lo, hi)
    i2 = PchipInterpolator(x2, y2).integrate(lo, hi)
    return float((i2 - i1) / (hi - lo))


def bd_rate(ref_rate, ref_quality, test_rate, test_quality) -> float:
    """Percent rate difference of test against reference at equal quality."""
    lr1, q1 = _prepare(ref_rate, ref_quality)
    lr2, q2 = _prepare(test_rate, test_quality)
    return (math.exp(_average_difference(q1, lr1, q2, lr2, "quality")) - 1.0) * 100.0


def bd_quality(ref_rate, ref_quality, test_rate, test_quality) -> float:
    """Average quality difference (e.g. dB) of test against reference at equal rate."""
    lr1, q1 = _prepare(ref_rate, ref_quality)
    lr2, q2 = _prepare(test_rate, test_quality)
    o1, o2 = np.argsort(lr1), np.argsort(lr2)
    return _average_difference(lr1[o1], q1[o1], lr2[o2], q2[o2], "rate")


def load_results(path: str | Path) -> dict:
    """A results file in CompressAI's schema: {"name", "results": {"bpp": [...], "psnr-rgb": [...], ...}}."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        results = doc["results"]
        if not isinstance(results.get("bpp"), list):
            raise KeyError("bpp")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidResultsError(f"{path}: not a results file in CompressAI's schema ({exc})") from None
    for metric in ("bpp", *QUALITY_METRICS):  # every curve: one finite number per rate point...
        values = results.get(metric, results["bpp"])
        rate = metric == "bpp"  # ...or null where a metric is undefined (MS-SSIM of a small image); rates > 0
        if (
            not isinstance(values, list)
            or len(values) != len(results["bpp"])
            or not all(
                (type(v) in (int, float) and math.isfinite(v) and (v > 0 or not rate)) or (v is None and not rate)
                for v in values
            )
        ):
            wanted = "a positive number per rate point" if rate else "one finite number (or null) per bpp value"
            raise InvalidResultsError(f"{path}: {metric!r} needs {wanted} ({len(results['bpp'])})")
    if not any(m in results for m in QUALITY_METRICS):
        raise InvalidResultsError(f"{path}: no quality curve ({', '.join(QUALITY_METRICS)})")
    doc.setdefault("name", Path(path).stem)
    if "psnr-rgb" not in results and "psnr" in results:  # CompressAI's older files call it "psnr"
        results["psnr-rgb"] = results["psnr"]
    return doc


class InvalidResultsError(VqzError):
    """A results JSON does not follow the expected schema."""


def compare(ref: dict, test: dict, metric: str = "psnr-rgb") -> dict:
    """BD-rate and BD-quality of `test` against `ref` (results dicts), on one metric."""
    r, t = ref["results"], test["results"]
    digests = ref.get("images_digest"), test.get("images_digest")  # vqz eval's summaries carry one
    if None not in digests and digests[0] != digests[1]:
        raise InvalidResultsError(f"{ref['name']} and {test['name']} were measured on different images")
    for doc in (ref, test):
        if metric not in doc["results"]:
            raise InvalidResultsError(f"{doc['name']} has no {metric!r} curve")
    out = {"reference": ref["name"], "test": test["name"], "metric": metric}
    missing = []
    for key, delta in (("bd_rate_pct", bd_rate), ("bd_quality", bd_quality)):
        try:
            out[key] = delta(r["bpp"], r[metric], t["bpp"], t[metric])
        except CurvesDoNotOverlapError as exc:  # the curves may share a quality range and not a rate one
            out[key] = None
            missing.append(str(exc))
        except ValueError as exc:  # too few points, or a curve that is not monotonic
            raise InvalidResultsError(f"{ref['name']} vs {test['name']}: {exc}") from None
    if len(missing) == 2:
        raise CurvesDoNotOverlapError(f"{ref['name']} vs {test['name']}: " + "; ".join(missing))
    return out
