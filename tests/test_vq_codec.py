"""vq-mcq: the export path (derived codebooks, index tables) and real coding, on a tiny model.

The shipped weights are exercised too when they are installed (registry test).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitstream import parse, serialize
from codec.media import Picture
from codec.models.vq import MultiCodebookQuantiser
from codec.models.vq_image import VQImageConfig, VQImageModel
from codec.vq_codec import VQCodec, codebook_key, load_state
from entropy import CorruptStreamError
from tests.test_training import _fake_data

TINY = VQImageConfig(channels=8, latent_channels=8, levels=3, codebooks=2, entries=16)
LADDER = ((1, 16), (2, 4), (2, 16), (3, 4), (3, 16))


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> bytes:
    import tools.export_weights as export_weights

    root = tmp_path_factory.mktemp("vq")
    _fake_data(root / "data")
    torch.manual_seed(0)
    model = VQImageModel(TINY)
    model.initialise_codebooks(torch.rand(4, 3, 256, 256), torch.Generator().manual_seed(0))
    checkpoint = root / "checkpoint.pt"
    torch.save({"arch": "vq", "config": dataclasses.asdict(TINY), "model": model.state_dict(), "step": 0,
                "minutes": 0.0}, checkpoint)  # fmt: skip
    weights = root / "weights"
    weights.mkdir()
    old = export_weights.WEIGHTS_DIR
    export_weights.WEIGHTS_DIR = weights
    try:
        out = export_weights.export_vq(checkpoint, root / "data", name="vq-tiny", crops=8, ladder=LADDER)
    finally:
        export_weights.WEIGHTS_DIR = old
    return out.read_bytes()


@pytest.fixture(scope="module")
def tiny_codec(tiny_weights):
    return VQCodec(load_state(tiny_weights), bytes(range(8)))


def _round_trip(codec, picture, quality):
    data = serialize(codec.encode([picture], quality=quality)[0])
    return codec.decode([parse(data)])[0], data


def test_derived_codebooks_are_weighted_kmeans_of_the_trained_one():
    q = MultiCodebookQuantiser(channels=4, codebooks=1, entries=8)
    with torch.no_grad():
        q.key_map.copy_(torch.eye(4))
        q.bases.copy_(torch.tensor([[0.0] * 4, [0.1] * 4, [10.0] * 4, [10.1] * 4] * 2)[None])
        q.values.copy_(q.bases * 2)
    counts = torch.tensor([[3.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    keys, values = q.derive(2, counts)
    assert keys.shape == (1, 2, 4) and values.shape == (1, 2, 4)
    found = sorted(float(k[0]) for k in keys[0])
    assert found[0] == pytest.approx(0.025, abs=1e-3)  # (3 x 0 + 1 x 0.1) / 4: usage-weighted
    assert found[1] == pytest.approx(10.05, abs=1e-2)
    assert torch.allclose(values, keys * 2, atol=1e-5)
    with pytest.raises(ValueError):
        q.derive(8, counts)


def test_every_rate_point_round_trips_and_rate_grows(tiny_codec, sample_pixels):
    assert tiny_codec.levels == len(LADDER)
    picture = Picture.from_array(sample_pixels[:130, :200])
    sizes = []
    for quality in range(1, tiny_codec.levels + 1):
        decoded, data = _round_trip(tiny_codec, picture, quality)
        assert decoded.pixels.shape == picture.pixels.shape
        sizes.append(len(data))
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    # fractional qualities round down to a rate point
    assert serialize(tiny_codec.encode([picture], quality=2.7)[0]) == serialize(
        tiny_codec.encode([picture], quality=2)[0]
    )


def test_a_bpp_search_tries_whole_rate_points_and_analyses_once(tiny_codec, sample_pixels, monkeypatch):
    """vq-mcq rounds qualities down: the search bisects over rate points (no level encoded twice), runs the
    analysis once per tile, and finds the highest rate point at or under the target."""
    from codec.registry import parameters

    picture = Picture.from_array(sample_pixels[:130, :200])
    bpp = [8 * len(serialize(tiny_codec.encode([picture], quality=q)[0])) / picture.info.pixels
           for q in range(1, tiny_codec.levels + 1)]  # fmt: skip
    analyses, tried = [], []
    analysed, encode_batch = tiny_codec._analysed, tiny_codec._encode_batch
    monkeypatch.setattr(tiny_codec, "_analysed", lambda x, f: analysed(x, lambda t: analyses.append(1) or f(t)))
    monkeypatch.setattr(tiny_codec, "_encode_batch", lambda x, q, d: tried.append(q) or encode_batch(x, q, d))
    for target in ((bpp[1] + bpp[2]) / 2, bpp[-2] + 1e-9):
        analyses.clear(), tried.clear()
        found = tiny_codec.encode_to_bpp(picture, target)
        assert len(set(tried)) == len(tried) <= tiny_codec.attempts() < 2 + tiny_codec.BISECTIONS
        assert all(q == int(q) for q in tried) and len(analyses) == 1
        best = max(q for q in range(1, tiny_codec.levels + 1) if bpp[q - 1] <= target)
        assert parameters(found)["quality"] == best
        assert serialize(found) == serialize(tiny_codec.encode([picture], quality=best)[0])


def test_indices_cost_less_than_fixed_length(tiny_codec, sample_pixels):
    picture = Picture.from_array(sample_pixels[:256, :256])
    container = tiny_codec.encode([picture], quality=tiny_codec.levels)[0]
    fixed_bits = sum((256 >> (4 + lv)) ** 2 * TINY.codebooks * 4 for lv in range(3))  # 16 entries: 4 bits
    coded_bits = 8 * sum(len(c) for c in container.data_chunks())
    assert coded_bits < fixed_bits * 1.1  # random-ish tiny model: near the bound, never far above


def test_batched_decode_of_mixed_qualities_matches_one_by_one(tiny_codec, sample_pixels):
    pictures = [Picture.from_array(sample_pixels[:64, :64]), Picture.from_array(sample_pixels[64:128, :64])]
    a = tiny_codec.encode([pictures[0]], quality=1)[0]
    b = tiny_codec.encode([pictures[1]], quality=tiny_codec.levels)[0]
    together = tiny_codec.decode([a, b])
    alone = [tiny_codec.decode([a])[0], tiny_codec.decode([b])[0]]
    assert all(np.array_equal(x.pixels, y.pixels) for x, y in zip(together, alone))


def test_decoding_does_not_depend_on_the_thread_count(tiny_codec, sample_pixels):
    container = tiny_codec.encode([Picture.from_array(sample_pixels[:192, :128])], quality=tiny_codec.levels)[0]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = tiny_codec.decode([container])[0].pixels
        others = []
        for threads in (2, 3):  # 3: oneDNN's transposed convolutions split differently there (see `frozen`)
            torch.set_num_threads(threads)
            others.append(tiny_codec.decode([container])[0].pixels)
    finally:
        torch.set_num_threads(before)
    assert all(np.array_equal(one, other) for other in others)


@pytest.mark.parametrize("small", [False, True])
def test_the_shipped_model_decodes_alike_at_any_thread_count(sample_pixels, small):
    """Its level-up maps are transposed convolutions: oneDNN's summed differently at 5 and 7 threads.

    (A Kodak-sized picture is needed: on 256 x 256 the old maps agreed at
    every thread count. The coder now runs them as sub-pixel convolutions;
    these, at the Kodak size's 8 x 12 coarsest level, and every layer of a
    small picture, went to PyTorch's own small-convolution path, which
    changed with the threads on an AVX-512 machine: see StableConv2d.)
    """
    from codec.registry import get_codec

    codec = get_codec("vq-mcq")
    row = np.concatenate([sample_pixels, sample_pixels[:, ::-1], sample_pixels], axis=1)
    picture = Picture.from_array(np.concatenate([row, row[::-1]], axis=0))  # 512 x 768
    if small:
        picture = Picture.from_array(sample_pixels[:70, :100])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        container = codec.encode([picture], quality=codec.levels)[0]
        one = codec.decode([container])[0].pixels
        others = []
        for threads in (3, 5, 7):
            torch.set_num_threads(threads)
            others.append(codec.decode([container])[0].pixels)
    finally:
        torch.set_num_threads(before)
    assert all(np.array_equal(one, other) for other in others)


def test_an_index_outside_the_codebook_is_a_corrupt_stream(tiny_codec, sample_pixels):
    from entropy import Encoder

    container = tiny_codec.encode([Picture.from_array(sample_pixels[:64, :64])], quality=1)[0]
    enc = Encoder()
    table = tiny_codec.tables[codebook_key(2, 16)][0][0]  # coarsest level, codebook 0: its one context
    enc.categorical(np.array([99]), table)  # escape-coded: decodes to 99, not a valid index
    bad = dataclasses.replace(container, chunks=[dataclasses.replace(container.chunks[0], data=enc.finish())])
    with pytest.raises(CorruptStreamError, match="outside"):
        tiny_codec.decode([bad])


def test_bench_reports_utilisation_and_fixed_length_bound(tiny_codec, sample_pixels):
    from tools.bench_vq import savings, utilisation

    pictures = [Picture.from_array(sample_pixels[:128, :192])]
    use = utilisation(tiny_codec, pictures)
    assert len(use) == TINY.levels * TINY.codebooks
    assert all(0 < u["used_fraction"] <= 1 and 1 <= u["perplexity"] <= TINY.entries for u in use)
    rows = savings(tiny_codec, pictures)
    top = rows[-1]
    # 128x192: 8x12 + 4x6 + 2x3 positions x 2 codebooks x 4 bits, over the pixels
    assert top["fixed_length_bpp"] == pytest.approx((96 + 24 + 6) * 2 * 4 / (128 * 192))
    assert [r["quality"] for r in rows] == list(range(1, len(LADDER) + 1))


@pytest.mark.parametrize("shape", [(1, 1, 3), (65, 33, 3), (17, 130, 1)])
def test_any_size_and_grey_round_trip(tiny_codec, sample_pixels, shape):
    h, w, c = shape
    pixels = sample_pixels[:h, :w, :1] if c == 1 else sample_pixels[:h, :w]
    decoded, _ = _round_trip(tiny_codec, Picture.from_array(pixels), tiny_codec.levels)
    assert decoded.pixels.shape == pixels.shape and decoded.pixels.dtype == np.uint8


def test_the_shipped_vq_codec_codes_the_sample(sample_pixels):
    from codec.media import psnr
    from codec.registry import get_codec

    codec = get_codec("vq-mcq")
    picture = Picture.from_array(sample_pixels)
    rates = []
    for quality in (1, codec.levels):
        decoded, data = _round_trip(codec, picture, quality)
        rates.append(8 * len(data) / picture.info.pixels)
    assert rates[0] < rates[1] < 0.25
    assert psnr(picture.pixels, decoded.pixels) > 20.0  # top rate point; a broken model gives ~10 dB


def test_index_contexts_and_the_stream_order():
    from codec.vq_codec import IndexContexts, _code_order

    ctx = IndexContexts(
        parent=np.array([[0, 1, 1, 0], [1, 0, 0, 1]]),
        previous=np.array([[0, 0, 0, 0], [0, 1, 2, 2]]),
        parent_groups=2,
        previous_groups=3,
    )
    parent = np.array([[1, 3]])  # (1, 2) at the coarser level -> (2, 4) here
    previous = np.array([[0, 1, 2, 3], [3, 2, 1, 0]])
    assert ctx.contexts == 6
    np.testing.assert_array_equal(ctx.ids(0, parent, None, (2, 4)), [[3, 3, 0, 0], [3, 3, 0, 0]])
    np.testing.assert_array_equal(ctx.ids(1, parent, previous, (2, 4)), [[0, 1, 5, 5], [2, 2, 4, 3]])
    np.testing.assert_array_equal(ctx.ids(1, None, previous, (2, 4)), [[0, 1, 2, 2], [2, 2, 1, 0]])
    ids = np.random.default_rng(0).integers(0, 6, (5, 7))
    order = _code_order(ids, 6)
    assert [g for g, _ in order] == sorted({int(v) for v in ids.reshape(-1)})
    positions = np.concatenate([p for _, p in order])
    assert sorted(positions.tolist()) == list(range(35))  # every position once
    for g, p in order:  # raster order within a context
        assert np.all(ids.reshape(-1)[p] == g) and np.all(np.diff(p) > 0)


def test_exported_contexts_fit_the_codebooks(tiny_codec):
    for key, ctx in tiny_codec.contexts.items():
        level, entries = (int(v) for v in key.split("/"))
        assert (ctx.parent is None) == (level == TINY.levels - 1)
        assert ctx.previous.shape == (TINY.codebooks, entries) and ctx.previous.max() < ctx.previous_groups
        if ctx.parent is not None:
            assert ctx.parent.shape == (TINY.codebooks, TINY.entries) and ctx.parent.max() < ctx.parent_groups
        assert all(len(t) == ctx.contexts for t in tiny_codec.tables[key])
        assert all(t.size == entries for per_context in tiny_codec.tables[key] for t in per_context)


def test_weights_whose_contexts_do_not_fit_are_refused(tiny_weights):
    from codec.weights import WeightsError

    key = codebook_key(0, TINY.entries)
    for part, value in (("previous", TINY.entries + 5), ("parent", -1)):
        state = load_state(tiny_weights)
        state["contexts"][key][part][1, 0] = value  # a group beyond its tables / below zero
        with pytest.raises(WeightsError, match="contexts"):
            VQCodec(state, bytes(8))
    state = load_state(tiny_weights)
    state["frequencies"][key] = state["frequencies"][key][:, :-1]  # one context's tables missing
    with pytest.raises(WeightsError, match="contexts"):
        VQCodec(state, bytes(8))
    state = load_state(tiny_weights)
    del state["contexts"]
    with pytest.raises(WeightsError, match="export them again"):
        VQCodec(state, bytes(8))


@settings(max_examples=40, deadline=None)
@given(data=st.data(), point=st.integers(0, len(LADDER) - 1), units=st.tuples(st.integers(1, 3), st.integers(1, 3)))
def test_index_streams_round_trip(tiny_codec, data, point, units):
    """Any indices of any ladder point and tile shape come back from their stream exactly (contexts included)."""
    sizes = tiny_codec.codebook_sizes(*LADDER[point])
    shape = (64 * units[0], 64 * units[1])
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    skew = data.draw(st.sampled_from([None, 0.7]))  # uniform, or most indices on a few entries
    indices = {}
    for level, size in sizes.items():
        h, w = shape[0] >> (4 + level), shape[1] >> (4 + level)
        if skew is None:
            indices[level] = rng.integers(0, size, (TINY.codebooks, h, w))
        else:
            indices[level] = np.minimum(rng.geometric(skew, (TINY.codebooks, h, w)) - 1, size - 1)
    back = tiny_codec._read_indices(tiny_codec._write_indices(indices, sizes), sizes, shape)
    assert list(back) == list(sizes)
    for level in sizes:
        np.testing.assert_array_equal(back[level], indices[level])


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(max_size=200), point=st.integers(0, len(LADDER) - 1))
def test_garbage_index_streams_fail_cleanly(tiny_codec, payload, point):
    """A hostile stream gives indices inside the codebooks or a CorruptStreamError, nothing else."""
    sizes = tiny_codec.codebook_sizes(*LADDER[point])
    try:
        back = tiny_codec._read_indices(payload, sizes, (128, 64))
    except CorruptStreamError:
        return
    for level, size in sizes.items():
        assert back[level].min() >= 0 and back[level].max() < size
