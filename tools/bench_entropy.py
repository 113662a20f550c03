"""Benchmark of the entropy layer: coded size against the ideal, and throughput.

    python -m tools.bench_entropy [--json] [--symbols N] [--repeats R]

For each case, N symbols are drawn from the very model they are coded with,
so the ideal size is their information content under that model (computed in
float64 from the exact distribution, not from our tables). `overhead_pct`
is the coded size over that ideal, in percent, of the worst case;
`msym_per_s` is the slowest of the encode and decode throughputs over all
cases (median of R runs, table building included).

The mixture cases' parameters imitate a hyperprior's output: most scales are
small, a few are large, and the K=3 components sit near a common centre.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Callable

import click
import numpy as np
from scipy.special import ndtr

from entropy import CategoricalTable, Decoder, Encoder


def _timed(fn: Callable[[], object], repeats: int) -> tuple[object, float]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def _categorical_case(n: int, rng: np.random.Generator):
    p = 0.97 ** np.arange(256)
    table = CategoricalTable.from_counts(p)
    probs = table.frequencies / table.frequencies.sum()
    symbols = rng.choice(256, size=n, p=probs).astype(np.int32)
    ideal = -np.log2(probs[symbols]).sum()
    return symbols, ideal, (lambda e: e.categorical(symbols, table)), (lambda d: d.categorical(table, n))


def _mixture_parameters(n: int, k: int, rng: np.random.Generator):
    centre = rng.normal(0.0, 1.5, (n, 1))
    means = centre + rng.normal(0.0, 0.4, (n, k))
    scales = np.exp(rng.normal(np.log(0.5), 0.9, (n, k))).clip(0.11, 64)
    weights = rng.dirichlet(np.ones(k), n)
    return weights, means, scales


def _mixture_case(n: int, k: int, rng: np.random.Generator):
    weights, means, scales = _mixture_parameters(n, k, rng)
    component = (rng.random((n, 1)) < np.cumsum(weights, 1)).argmax(1)
    rows = np.arange(n)
    symbols = np.round(means[rows, component] + scales[rows, component] * rng.normal(size=n)).astype(np.int32)
    x = symbols[:, None].astype(np.float64)
    p = (weights * (ndtr((x + 0.5 - means) / scales) - ndtr((x - 0.5 - means) / scales))).sum(1)
    ideal = -np.log2(p).sum()
    if k == 1:
        return symbols, ideal, (lambda e: e.gaussian(symbols, means, scales)), (lambda d: d.gaussian(means, scales))
    return (
        symbols,
        ideal,
        lambda e: e.mixture(symbols, weights, means, scales),
        lambda d: d.mixture(weights, means, scales),
    )


def run(n: int = 10**6, repeats: int = 5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    cases = {
        "categorical_256": _categorical_case(n, rng),
        "gaussian": _mixture_case(n, 1, rng),
        "gaussian_mixture_k3": _mixture_case(n, 3, rng),
    }
    report: dict = {"symbols": n, "repeats": repeats, "cases": {}}
    for name, (symbols, ideal, encode, decode) in cases.items():

        def do_encode():
            enc = Encoder()
            encode(enc)
            return enc.finish()

        data, t_enc = _timed(do_encode, repeats)
        decoded, t_dec = _timed(lambda: decode(Decoder(data)), repeats)
        if not np.array_equal(decoded, symbols):
            raise AssertionError(f"{name}: round trip failed")
        bits = 8 * len(data)
        report["cases"][name] = {
            "bits_per_symbol": bits / n,
            "ideal_bits_per_symbol": float(ideal) / n,
            "overhead_pct": 100.0 * (bits - ideal) / ideal,
            "encode_msym_per_s": n / t_enc / 1e6,
            "decode_msym_per_s": n / t_dec / 1e6,
        }
    c = report["cases"].values()
    report["overhead_pct"] = max(v["overhead_pct"] for v in c)
    report["msym_per_s"] = min(min(v["encode_msym_per_s"], v["decode_msym_per_s"]) for v in c)
    return report


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--symbols", default=10**6, show_default=True)
@click.option("--repeats", default=5, show_default=True, help="Timed runs per case (median reported).")
def main(as_json: bool, symbols: int, repeats: int) -> None:
    """Coded size over the ideal and throughput of the entropy layer."""
    report = run(symbols, repeats)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for name, v in report["cases"].items():
        click.echo(
            f"{name:22s} {v['bits_per_symbol']:.4f} bits/sym (ideal {v['ideal_bits_per_symbol']:.4f}, "
            f"+{v['overhead_pct']:.3f}%)  encode {v['encode_msym_per_s']:.1f} Msym/s  "
            f"decode {v['decode_msym_per_s']:.1f} Msym/s"
        )
    click.echo(f"worst overhead {report['overhead_pct']:.3f}%, slowest {report['msym_per_s']:.1f} Msym/s")


if __name__ == "__main__":
    main()
