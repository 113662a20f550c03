"""The entropy layer: exact round trips under every model, escapes, determinism, bad streams."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from entropy import CategoricalTable, CorruptStreamError, Decoder, Encoder, tables

INT32 = st.integers(np.iinfo(np.int32).min, np.iinfo(np.int32).max)


@settings(max_examples=150, deadline=None)
@given(
    freqs=hnp.arrays(np.int64, st.integers(1, 300), elements=st.integers(0, 5000)),
    data=st.data(),
)
def test_categorical_round_trip(freqs, data):
    table = CategoricalTable(freqs)
    n = data.draw(st.integers(0, 400))
    # mostly in-range symbols, some arbitrary int32 (escapes)
    symbols = np.array(
        data.draw(st.lists(st.one_of(st.integers(0, freqs.size - 1), INT32), min_size=n, max_size=n)),
        dtype=np.int64,
    )
    enc = Encoder()
    enc.categorical(symbols, table)
    out = Decoder(enc.finish()).categorical(table, n)
    assert np.array_equal(out, symbols)


def _parameters(draw, n: int, k: int):
    means = draw(hnp.arrays(np.float64, (n, k), elements=st.floats(-300, 300)))
    scales = draw(hnp.arrays(np.float64, (n, k), elements=st.floats(1e-3, 5000)))
    weights = draw(hnp.arrays(np.float64, (n, k), elements=st.floats(0, 1)))
    return weights, means, scales


@settings(max_examples=150, deadline=None)
@given(data=st.data(), k=st.integers(1, 4), family=st.sampled_from(["gaussian", "laplace", "mixture"]))
def test_parametric_round_trip(data, k, family):
    n = data.draw(st.integers(0, 300))
    weights, means, scales = _parameters(data.draw, n, k)
    near = np.round(means[:, 0] + data.draw(hnp.arrays(np.float64, n, elements=st.floats(-20, 20))))
    wild = np.array(data.draw(st.lists(INT32, min_size=n, max_size=n)), dtype=np.float64)
    pick = data.draw(hnp.arrays(np.bool_, n))
    symbols = np.where(pick, wild, near).astype(np.int64).clip(-(2**31), 2**31 - 1)
    enc = Encoder()
    if family == "mixture":
        enc.mixture(symbols, weights, means, scales)
        out = Decoder(enc.finish()).mixture(weights, means, scales)
    else:
        getattr(enc, family)(symbols, means[:, 0], scales[:, 0])
        out = getattr(Decoder(enc.finish()), family)(means[:, 0], scales[:, 0])
    assert np.array_equal(out, symbols)


def test_degenerate_parameters_still_round_trip():
    means = np.array([np.nan, np.inf, -np.inf, 1e300, 0.0, 5.0])
    scales = np.array([np.nan, 0.0, -1.0, np.inf, 1e-300, 1e300])
    symbols = np.array([0, 2**31 - 1, -(2**31), 7, 0, -3])
    enc = Encoder()
    enc.gaussian(symbols, means, scales)
    assert np.array_equal(Decoder(enc.finish()).gaussian(means, scales), symbols)
    weights = np.array([[np.nan, 0.0], [0.0, 0.0], [1, 1], [-1, 2], [1e300, 1], [0.5, 0.5]])
    enc = Encoder()
    enc.mixture(symbols, weights, np.stack([means, means], 1), np.stack([scales, scales], 1))
    assert np.array_equal(
        Decoder(enc.finish()).mixture(weights, np.stack([means, means], 1), np.stack([scales, scales], 1)), symbols
    )


def test_several_models_share_one_stream():
    rng = np.random.default_rng(0)
    table = CategoricalTable.from_counts(np.arange(1, 17))
    a = rng.integers(0, 16, 1000)
    mu, sd = rng.normal(0, 3, 500), rng.uniform(0.2, 4, 500)
    b = np.round(rng.normal(mu, sd)).astype(np.int64)
    enc = Encoder()
    enc.categorical(a, table)
    enc.laplace(b, mu, sd)
    enc.categorical(a[::-1], table)
    dec = Decoder(enc.finish())
    assert np.array_equal(dec.categorical(table, 1000), a)
    assert np.array_equal(dec.laplace(mu, sd), b)
    assert np.array_equal(dec.categorical(table, 1000), a[::-1])


def test_coded_size_is_close_to_the_information_content():
    from scipy.special import ndtr

    rng = np.random.default_rng(1)
    n = 50_000
    mu, sd = rng.normal(0, 2, n), np.exp(rng.uniform(-1, 2, n))
    x = np.round(rng.normal(mu, sd)).astype(np.int64)
    enc = Encoder()
    enc.gaussian(x, mu, sd)
    bits = 8 * len(enc.finish())
    ideal = -np.log2(ndtr((x + 0.5 - mu) / sd) - ndtr((x - 0.5 - mu) / sd)).sum()
    assert ideal < bits < ideal * 1.005 + 64


def test_tables_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(2)
    n = 100_000
    w, mu, sd = rng.dirichlet(np.ones(3), n), rng.normal(0, 3, (n, 3)), np.exp(rng.normal(0, 1, (n, 3)))
    x = np.round(mu[:, 0]).astype(np.int64)
    streams = []
    before = numba.get_num_threads()
    try:
        for threads in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            enc = Encoder()
            enc.mixture(x, w, mu, sd)
            streams.append(enc.finish())
    finally:
        numba.set_num_threads(before)
    assert streams[0] == streams[1]


def test_scale_grid_lookup_matches_a_plain_search():
    rng = np.random.default_rng(3)
    grid = tables.SCALE_GRID
    s = np.concatenate([np.exp(rng.uniform(-4, 9, 20_000)), grid, np.nextafter(grid, 0), np.nextafter(grid, np.inf)])
    s = s[:, None].copy()
    _, _, index, _, _ = tables.plan_parameters(
        np.ones_like(s), np.zeros_like(s), s, s.view(np.int64), 5.0, tables.OCTAVE_MANTISSAS, tables.BUCKET_FIRST, grid
    )
    assert np.array_equal(index[:, 0], np.minimum(np.searchsorted(grid, s[:, 0]), grid.size - 1))


def test_cdf_tables_are_the_committed_ones():
    # The shipped tables are part of the format: changing them changes every file.
    import hashlib
    from importlib import resources

    data = resources.files("entropy").joinpath("cdf_tables.npz").read_bytes()
    with np.load(resources.files("entropy").joinpath("cdf_tables.npz")) as npz:
        normal = npz["normal"]
    x = np.linspace(-16, 16, normal.size)
    from scipy.special import ndtr

    assert np.abs(normal - ndtr(x)).max() < 1e-15
    assert hashlib.sha256(data).hexdigest()[:16] == EXPECTED_CDF_DIGEST


EXPECTED_CDF_DIGEST = "9e6e6d62d26a7ec1"


def test_what_a_decoder_counts_never_exceeds_what_the_encoder_wrote():
    """The stream check's premise, without its slack, where its margins matter: long, skewed streams."""
    rng = np.random.default_rng(7)
    for size in (2, 17, 256, 65536):
        for peak in (0.5, 0.99, 0.999999):
            freqs = np.ones(size, np.int64)  # every other entry once, the escape once: entry 0 has about `peak`
            freqs[0] = min(65535, round(peak / (1 - peak) * size))
            table = CategoricalTable(freqs)
            p = np.append(freqs, 1) / (freqs.sum() + 1)
            symbols = rng.choice(size + 1, 30_000, p=p)
            symbols[rng.integers(0, 30_000, 40)] = rng.integers(0, size, 40)  # rare ones too
            symbols[symbols == size] = -5  # escapes
            enc = Encoder()
            enc.categorical(symbols, table)
            data = enc.finish()
            dec = Decoder(data)
            assert np.array_equal(dec.categorical(table, symbols.size), symbols)
            assert dec._spent <= 8 * len(data), (size, peak, dec._spent, 8 * len(data))
    n = 60_000
    means = rng.normal(0, 30, (n, 3))
    scales = np.exp(rng.uniform(np.log(1e-3), np.log(3000), (n, 3)))
    weights = rng.dirichlet(np.ones(3), n)
    symbols = np.round(means[:, 0] + scales[:, 0] * rng.standard_normal(n) * rng.choice([0.2, 1, 4, 50], n))
    symbols = symbols.clip(-(2**31), 2**31 - 1).astype(np.int64)  # window edges and far escapes
    enc = Encoder()
    enc.mixture(symbols, weights, means, scales)
    data = enc.finish()
    dec = Decoder(data)
    assert np.array_equal(dec.mixture(weights, means, scales), symbols)
    assert dec._spent <= 8 * len(data), (dec._spent, 8 * len(data))


def test_a_stream_shorter_than_its_symbols_is_refused():
    """constriction reads zeros past the end of its data; the decoder counts what its symbols cost."""
    rng = np.random.default_rng(0)
    table = CategoricalTable(np.array([5, 3, 1, 1]))
    enc = Encoder()
    enc.categorical(rng.integers(0, 4, 1000), table)
    data = enc.finish()
    with pytest.raises(CorruptStreamError, match="ends before its symbols do"):
        Decoder(data).categorical(table, 20_000)  # a file declaring more than was coded
    with pytest.raises(CorruptStreamError, match="ends before"):
        Decoder(b"").categorical(table, 10**9)  # refused before decoding a billion symbols from nothing
    means, scales = rng.normal(0, 3, 5000), np.full(5000, 2.0)
    enc = Encoder()
    enc.gaussian(np.round(means + rng.normal(0, 2, 5000)).astype(np.int64), means, scales)
    data = enc.finish()
    with pytest.raises(CorruptStreamError, match="ends before"):
        Decoder(data[: len(data) // 2 // 4 * 4]).gaussian(means, scales)  # truncated
    with pytest.raises(CorruptStreamError, match="ends before"):
        Decoder(b"").gaussian(np.zeros(50_000), np.full(50_000, 0.3))  # nothing, where 50,000 symbols are due
    flat = CategoricalTable(np.array([65535] + [0] * 255))  # even a near-certain symbol costs something
    with pytest.raises(CorruptStreamError, match="ends before"):
        Decoder(b"").categorical(flat, 4096 * 4096)


def test_bad_streams_raise_documented_errors():
    table = CategoricalTable.from_counts(np.ones(10))
    with pytest.raises(CorruptStreamError, match="32-bit"):
        Decoder(b"abc")
    rng = np.random.default_rng(4)
    for _ in range(200):
        junk = rng.integers(0, 256, 4 * rng.integers(0, 8), dtype=np.uint8).tobytes()
        try:
            Decoder(junk).categorical(table, 50)
            Decoder(junk).gaussian(np.zeros(50), np.ones(50))
        except CorruptStreamError:
            pass


def test_invalid_arguments():
    with pytest.raises(ValueError):
        CategoricalTable(np.array([-1, 2]))
    with pytest.raises(ValueError):
        Encoder().categorical(np.array([2**40]), CategoricalTable(np.ones(3, np.int64)))
    with pytest.raises(TypeError):
        Encoder().categorical(np.array([0.5]), CategoricalTable(np.ones(3, np.int64)))
    with pytest.raises(ValueError, match="parameter sets"):
        Encoder().gaussian(np.zeros(3, np.int64), np.zeros(2), np.ones(2))
