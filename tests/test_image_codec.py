"""hyperprior-gmm on real and odd-shaped pictures: sizes, channels, tiles, rate control, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import codec.tile_params as tile_params
import codec.tiled as tiled
from bitstream import ImageInfo, parse, serialize
from codec.errors import InvalidRequestError, UnsupportedMediaError
from codec.media import Picture
from codec.registry import codec_for, get_codec
from entropy import CorruptStreamError


@pytest.fixture(scope="module")
def gmm():
    return get_codec("hyperprior-gmm")


def _psnr(a, b):
    return 10 * np.log10(255.0**2 / np.mean((a.astype(float) - b.astype(float)) ** 2))


def _round_trip(codec, picture, **kw):
    container = codec.encode([picture], **kw)[0]
    data = serialize(container)
    back = parse(data)
    return codec_for(back).decode([back])[0], data


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 7, 3), (65, 33, 3), (64, 64, 3), (17, 130, 1)])
def test_any_size_round_trips(gmm, sample_pixels, shape):
    h, w, c = shape
    pixels = sample_pixels[:h, :w, :1] if c == 1 else sample_pixels[:h, :w]
    decoded, _ = _round_trip(gmm, Picture.from_array(pixels))
    assert decoded.pixels.shape == pixels.shape and decoded.pixels.dtype == np.uint8


def test_quality_controls_the_rate(gmm, sample_pixels):
    picture = Picture.from_array(sample_pixels)
    sizes = [len(serialize(gmm.encode([picture], quality=q)[0])) for q in (1, 2.5, 4, gmm.levels)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_target_bpp_lands_at_or_under_the_target(gmm, sample_pixels):
    picture = Picture.from_array(sample_pixels)
    pixels = picture.info.pixels
    low = 8 * len(serialize(gmm.encode([picture], quality=1)[0])) / pixels
    high = 8 * len(serialize(gmm.encode([picture], quality=gmm.levels)[0])) / pixels
    target = (low + high) / 2
    steps = []
    got = 8 * len(serialize(gmm.encode_to_bpp(picture, target, progress=lambda *step: steps.append(step)))) / pixels
    assert got <= target and got > low
    fractions = [done / total for done, total in steps]
    assert fractions == sorted(fractions) and 0 < fractions[0] and fractions[-1] == 1  # one bar over the search
    assert len(steps) == gmm.attempts() + 1  # one tile per attempt, then completion
    with pytest.raises(InvalidRequestError, match="out of reach"):  # "at most" cannot be kept: no file
        gmm.encode_to_bpp(picture, low / 2)


def test_a_gpu_is_checked_against_the_ones_the_machine_has(monkeypatch):
    from codec.registry import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert check_device("cuda") == "cuda" and check_device("cuda:0") == "cuda:0" and check_device(None) == "cpu"
    with pytest.raises(InvalidRequestError, match="cuda:1 was asked for, but this machine has 1 CUDA device$"):
        check_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InvalidRequestError, match="cuda was asked for, but this machine has no CUDA device"):
        check_device("cuda")


def test_library_target_bpp_is_the_codecs_search(gmm, sample_pixels):
    import codec

    images = [sample_pixels[:64, :96], sample_pixels[100:, 50:]]
    files = codec.encode(images, target_bpp=0.5)
    assert files == [serialize(gmm.encode_to_bpp(Picture.from_array(i), 0.5)) for i in images]
    assert all(8 * len(f) / (i.shape[0] * i.shape[1]) <= 0.5 for f, i in zip(files, images))
    with pytest.raises(InvalidRequestError, match="not both"):
        codec.encode(images, quality=3, target_bpp=0.5)
    with pytest.raises(InvalidRequestError, match="positive"):
        codec.encode(images, target_bpp=0)
    with pytest.raises(InvalidRequestError, match="a number, not a str"):
        codec.encode(images, target_bpp="0.5")
    with pytest.raises(InvalidRequestError, match="does not apply"):
        codec.encode(images, model="lossless-delta", target_bpp=4)


def test_a_bpp_search_runs_the_analysis_once_per_tile(gmm, sample_pixels, monkeypatch):
    """The gains come after g_a, so a --target-bpp search keeps its output: the same file, one g_a per tile."""
    from codec.registry import parameters

    picture = Picture.from_array(sample_pixels)
    calls = []
    real = gmm._transforms_on

    def counting(device):
        analysis, synthesis = real(device)
        return (lambda x: calls.append(x.shape) or analysis(x)), synthesis

    monkeypatch.setattr(gmm, "_transforms_on", counting)
    found = gmm.encode_to_bpp(picture, 0.5)
    assert len(calls) == 1 and gmm._searched is None  # one tile; nothing kept after the search
    fresh = gmm.encode([picture], quality=parameters(found)["quality"])[0]  # g_a run again, as outside a search
    assert serialize(fresh) == serialize(found) and len(calls) == 2


def test_a_bpp_search_tells_tiles_of_equal_bytes_and_other_shapes_apart(gmm, monkeypatch):
    """A flat picture's 128 x 64 and 64 x 128 edge tiles hold the same bytes: each keeps its own analysis."""
    from codec import tiled
    from codec.registry import parameters

    monkeypatch.setattr(tiled, "DEFAULT_TILE", 128)
    picture = Picture.from_array(np.full((192, 192, 3), 90, np.uint8))
    found = gmm.encode_to_bpp(picture, 0.2)
    assert serialize(found) == serialize(gmm.encode([picture], quality=parameters(found)["quality"])[0])


def test_batch_equals_one_by_one(gmm, sample_pixels):
    pictures = [
        Picture.from_array(sample_pixels[:100, :120]),
        Picture.from_array(sample_pixels[50:, 30:]),
        Picture.from_array(sample_pixels[:100, 100:220]),
    ]
    batch = [serialize(c) for c in gmm.encode(pictures, quality=3)]
    single = [serialize(gmm.encode([p], quality=3)[0]) for p in pictures]
    assert batch == single


def test_progress_counts_tiles_as_they_are_coded(gmm, sample_pixels, monkeypatch):
    monkeypatch.setattr(tiled, "DEFAULT_TILE", 128)
    picture = Picture.from_array(sample_pixels[:130, :256])  # tiles 128x128 (two, one batch) and 2x128 (two)
    steps = []
    container = gmm.encode([picture], quality=2, progress=lambda *step: steps.append(step))[0]
    assert steps == [(2, 4), (4, 4)]
    steps.clear()
    gmm.decode([container], progress=lambda *step: steps.append(step))
    assert steps == [(2, 4), (4, 4)]


def test_tiles_are_counted_before_any_work(gmm, sample_pixels, monkeypatch):
    """A ~100-byte file may declare millions of tiles, or tiles past the memory bound: refused at once."""
    container = gmm.encode([Picture.from_array(sample_pixels[:48, :64])], quality=2)[0]
    layout, q, _ = tile_params.PARAMS.unpack(container.params)
    container.media = ImageInfo(1 << 28, 1, 3)  # the largest picture a reader allows
    container.params = tile_params.PARAMS.pack(layout, q, 1)  # in 64-pixel tiles: 4,194,304 of them
    monkeypatch.setattr(tiled, "tile_grid", None)  # building that grid took 15 s and 1.5 GB
    with pytest.raises(CorruptStreamError, match="1 data chunks for 4194304 tiles"):
        gmm.decode([parse(serialize(container))])
    container.media = ImageInfo(64, 48, 3)
    container.params = tile_params.PARAMS.pack(layout, q, 2048 // tile_params.ALIGN)
    with pytest.raises(CorruptStreamError, match="tile size 2048 is out of range"):
        gmm.decode([parse(serialize(container))])


def test_headers_their_encoders_never_write_are_refused(sample_pixels):
    picture = Picture.from_array(sample_pixels[:48, :64])
    exact = get_codec("lossless-delta").encode([picture])[0]
    exact.media = ImageInfo(64, 48, 3, bit_depth=16)
    with pytest.raises(CorruptStreamError, match="8-bit"):
        get_codec("lossless-delta").decode([parse(serialize(exact))])
    for params in (b"\x03", b"\x01\x00"):  # b"", b"\x01" and b"\x02" are its methods
        exact.media, exact.params = ImageInfo(64, 48, 3), params
        with pytest.raises(CorruptStreamError, match="name no method"):
            get_codec("lossless-delta").decode([parse(serialize(exact))])
    vq = get_codec("vq-mcq")
    container = vq.encode([picture], quality=2)[0]
    layout, _, tile = tile_params.PARAMS.unpack(container.params)
    container.params = tile_params.PARAMS.pack(layout, 2.5, tile)  # vq-mcq writes whole rate points only
    with pytest.raises(CorruptStreamError, match="not a rate point"):
        vq.decode([parse(serialize(container))])


def test_the_encoder_writes_tiles_its_decoder_accepts():
    assert tile_params.ALIGN <= tiled.DEFAULT_TILE <= tiled.MAX_TILE and tiled.DEFAULT_TILE % tile_params.ALIGN == 0


def test_network_calls_are_bounded_in_tiles_and_pixels():
    assert tiled.batch_size((1024, 1024)) == 2  # full tiles in pairs: the 8000x8000 memory bound
    assert tiled.batch_size((512, 768)) == tiled.BATCH_TILES  # Kodak-sized pictures still batch fully
    assert tiled.batch_size((4096, 4096)) == 1
    jobs = [("a", (512, 768))] * 5 + [("b", (1024, 1024))] * 3 + [("c", (512, 768))]
    groups = list(tiled.batches(jobs, shape=lambda job: job[1]))
    assert [len(g) for g in groups] == [4, 2, 2, 1]  # same shapes together, first-seen order
    assert groups[1][-1] == ("c", (512, 768)) and all(len({j[1] for j in g}) == 1 for g in groups)


def test_tiles_each_get_a_chunk_and_join_seamlessly(gmm, sample_pixels, monkeypatch):
    monkeypatch.setattr(tiled, "DEFAULT_TILE", 128)
    picture = Picture.from_array(sample_pixels[:200, :250])
    container = gmm.encode([picture], quality=5)[0]
    assert len(container.data_chunks()) == 4
    decoded = gmm.decode([parse(serialize(container))])[0]
    assert decoded.pixels.shape == picture.pixels.shape
    monkeypatch.setattr(tiled, "DEFAULT_TILE", 1024)
    whole = gmm.decode([gmm.encode([picture], quality=5)[0]])[0]
    assert abs(_psnr(decoded.pixels, picture.pixels) - _psnr(whole.pixels, picture.pixels)) < 1.5


def test_rgba_grey_and_transparency(gmm, sample_pixels):
    opaque = np.concatenate([sample_pixels[:32, :32], np.full((32, 32, 1), 255, np.uint8)], axis=2)
    decoded, _ = _round_trip(gmm, Picture.from_array(opaque))
    assert decoded.pixels.shape == (32, 32, 3)  # fully opaque alpha is dropped without loss
    transparent = opaque.copy()
    transparent[0, 0, 3] = 0
    with pytest.raises(UnsupportedMediaError, match="transparency"):
        gmm.encode([Picture.from_array(transparent)])


def test_bad_requests(gmm, sample_pixels):
    picture = Picture.from_array(sample_pixels[:16, :16])
    for q in (0, gmm.levels + 0.5, float("nan")):
        with pytest.raises(InvalidRequestError):
            gmm.encode([picture], quality=q)
    with pytest.raises(InvalidRequestError):
        gmm.encode([picture], device="tpu")


@pytest.mark.parametrize("size", [(256, 256), (200, 131), (24, 40)])
def test_decoding_does_not_depend_on_the_thread_count(gmm, sample_pixels, size):
    """Encode with 1 torch thread, decode with 1, 2, 3 and 5: the same pixels.

    (Odd counts too: oneDNN's transposed convolutions split their sums
    differently at 3, 5, 6 and 7 threads, which is why the coding-time
    synthesis has none; see `frozen`. And a small picture: PyTorch's own
    path for small convolutions changed with the threads; see StableConv2d.)

    (Encoding with 2 threads may choose other latents, which is allowed: the
    file it makes decodes just as reproducibly.)
    """
    picture = Picture.from_array(sample_pixels[: size[0], : size[1]])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        data = serialize(gmm.encode([picture], quality=4)[0])
        one = gmm.decode([parse(data)])[0].pixels
        others = []
        for threads in (2, 3, 5):
            torch.set_num_threads(threads)
            others.append(gmm.decode([parse(data)])[0].pixels)
    finally:
        torch.set_num_threads(before)
    for other in others:
        assert np.array_equal(one, other)


def test_encoder_and_decoder_give_the_hyper_synthesis_the_same_memory_layout(gmm, sample_pixels):
    """h_s's float64 layers round their last bits by memory layout: both sides must feed it channel-major z.

    (The analysis runs channels-last, so the encoder's z is channels-last
    unless the codec makes it contiguous; the decoder's comes from NumPy.)
    """
    seen = []
    hook = gmm._hyper_synthesis[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    try:
        container = gmm.encode([Picture.from_array(sample_pixels[:128, :192])], quality=3)[0]
        gmm.decode([container])
    finally:
        hook.remove()
    assert seen == [True, True]


@pytest.mark.parametrize("kernel", [3, 5])
def test_a_sub_pixel_deconvolution_equals_the_transposed_one(kernel):
    """Every phase, tap and shape, in channel-major and channels-last memory, batch > 1, odd sizes."""
    from codec.models.hyperprior import SubPixelDeconv, _deconv

    torch.manual_seed(kernel)
    for cin, cout in ((7, 5), (4, 16)):
        deconv = _deconv(cin, cout, kernel, 2).eval()
        assert SubPixelDeconv.applies(deconv)
        sub = SubPixelDeconv(deconv)
        for shape in ((2, cin, 5, 7), (1, cin, 1, 1), (3, cin, 4, 3)):
            x = torch.randn(*shape)
            with torch.no_grad():
                want = deconv(x)
                for layout in (torch.contiguous_format, torch.channels_last):
                    got = sub(x.contiguous(memory_format=layout))
                    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)
    assert not SubPixelDeconv.applies(torch.nn.ConvTranspose2d(4, 4, 5, stride=2, padding=2))  # no output padding


def test_coding_transforms_match_the_trained_ones(gmm):
    from codec.models.hyperprior import frozen

    y = torch.randn(2, gmm.config.latent_channels, 6, 5) * 3
    x = torch.rand(2, 3, 64, 48)
    q = torch.tensor([1.0, 4.5])
    with torch.no_grad():
        a = gmm.model.synthesise(y, q)
        b = gmm.model.synthesise(y, q, frozen(gmm.model.g_s))
        ya, za = gmm.model.analyse(x, q)
        yb, zb = gmm.model.analyse(x, q, frozen(gmm.model.g_a))
    # Random latents drive the synthesis far out of the image range (|x| up to ~250): float32 rounding
    # of the rearranged sums reaches a few 1e-4 there; a wrong tap or layout would be off by whole units.
    assert torch.allclose(a, b, atol=1e-3)
    assert torch.allclose(ya, yb, atol=1e-4) and torch.allclose(za, zb, atol=1e-3)


def test_the_shipped_decoder_applies_its_post_filter(gmm):
    """The post-filter is part of decoding (it changes the image) and of the trained model's output."""
    assert gmm.model.post is not None
    y = torch.randn(1, gmm.config.latent_channels, 4, 4) * 3
    q = torch.tensor([0.0])
    with torch.no_grad():
        plain = gmm.model.synthesise(y, q, post=False)
        assert (gmm.model.synthesise(y, q) - plain).abs().mean() > 1e-3


def test_a_new_post_filter_is_the_identity_and_interpolates_between_levels():
    from codec.models.hyperprior import PostFilter

    torch.manual_seed(0)
    f = PostFilter(8, 3, levels=3)
    x = torch.rand(2, 3, 16, 12)
    with torch.no_grad():
        assert torch.equal(f(x, torch.tensor([0.0, 2.0])), x)
        torch.nn.init.normal_(f.convs[-1].weight, std=0.1)
        f.log_scale.normal_()
        at = {q: f(x[:1], torch.tensor([q])) for q in (1.0, 1.5, 2.0)}
        scale = f.log_scale.exp()
        half = torch.sqrt(scale[1] * scale[2])  # geometric mean of the two levels' scales
        f.log_scale[1] = half.log()
        assert torch.allclose(at[1.5], f(x[:1], torch.tensor([1.0])), atol=1e-6)
        assert not torch.allclose(at[1.5], at[2.0])
        before = torch.get_num_threads()
        try:
            outs = []
            for threads in (1, 2):
                torch.set_num_threads(threads)
                outs.append(f(torch.rand(1, 3, 96, 80, generator=torch.Generator().manual_seed(1)), torch.ones(1)))
        finally:
            torch.set_num_threads(before)
        assert torch.equal(outs[0], outs[1])


def test_icc_profile_survives(gmm, sample_pixels):
    picture = Picture(sample_pixels[:16, :16].copy(), icc=b"fake icc profile")
    decoded, _ = _round_trip(gmm, picture)
    assert decoded.icc == b"fake icc profile"


def test_library_api_batches_and_reports_errors(sample_pixels):
    import codec

    images = [sample_pixels[:64, :96], sample_pixels[:50, :50, 0]]
    files = codec.encode(images, quality=2)
    lossless = codec.encode([sample_pixels[:20, :20]], model="lossless-delta")
    decoded = codec.decode(files + lossless)
    assert [d.shape for d in decoded] == [(64, 96, 3), (50, 50, 1), (20, 20, 3)]
    assert np.array_equal(decoded[2], sample_pixels[:20, :20])
    assert "hyperprior-gmm" in codec.list_codecs()
    with pytest.raises(codec.VqzError):
        codec.decode([b"not a vqz file"])
    # one item where a list is due: refused, not iterated (an image's rows are no batch)
    for call, arg in ((codec.encode, sample_pixels), (codec.decode, files[0]), (codec.decode, "p.vqz")):
        with pytest.raises(InvalidRequestError, match="list"):
            call(arg)
    with pytest.raises(InvalidRequestError, match="not the bytes"):
        codec.decode(["p.vqz"])
    with pytest.raises(codec.VqzError, match="missing.png"):
        codec.encode(["missing.png"])
    with pytest.raises(InvalidRequestError, match="no quality"):
        codec.encode([sample_pixels[:8, :8]], model="lossless-delta", quality=3)
    # any iterable, read once; a torch.device as torch users write it
    assert len(codec.decode(f for f in files)) == 2
    assert codec.encode([images[0]], quality=2, device=torch.device("cpu")) == files[:1]
    wrong = [
        (lambda: codec.encode(None), "list of images"),
        (lambda: codec.decode(3), "list of .vqz"),
        (lambda: codec.encode([images[0]], quality="high"), "number"),
        (lambda: codec.encode([images[0]], quality="3"), "number"),
        (lambda: codec.encode([images[0]], model=["hyperprior-gmm"]), "string"),
        (lambda: codec.encode([images[0]], model="lossless-delta", device="gpu"), "unknown device"),
        (lambda: codec.encode([b"\x89PNG"]), "path"),
        (lambda: codec.encode([images[0]], quality=True), "number"),
    ]
    for call, needle in wrong:
        with pytest.raises(InvalidRequestError, match=needle):
            call()
    with pytest.raises(codec.VqzError, match="unknown codec ''"):  # not the default under another name
        codec.encode([images[0]], model="")


def test_library_takes_pillow_images_as_their_mode_means_them(sample_pixels):
    """A palette image as an array would be its indices (grey); CMYK as an array would be RGBA."""
    from PIL import Image

    import codec

    palette = Image.fromarray(sample_pixels[:40, :60]).convert("P")
    file = codec.encode([palette], model="lossless-delta")[0]
    assert np.array_equal(codec.decode([file])[0], np.asarray(palette.convert("RGB")))
    assert codec.encode([Image.fromarray(sample_pixels[:64, :96])], quality=2) == codec.encode(
        [sample_pixels[:64, :96]], quality=2
    )
    with pytest.raises(codec.VqzError, match="CMYK"):
        codec.encode([Image.new("CMYK", (8, 8))])


def test_hyper_latent_tables_follow_the_rate_level():
    """A whole level codes with its own tables; between two levels their integer frequencies blend."""
    from codec.image_codec import level_frequencies

    f = np.stack([np.full((2, 5), 100), np.full((2, 5), 300), np.full((2, 5), 1)]).astype(np.int64)
    assert (level_frequencies(f, 1.0) == 100).all() and (level_frequencies(f, 3.0) == 1).all()
    assert (level_frequencies(f, 1.5) == 200).all()
    assert (level_frequencies(f, 2.75) == 75).all()  # floor(0.25 * 300 + 0.75 * 1)
    assert (level_frequencies(f, 0.5) == 100).all() and (level_frequencies(f, 7.0) == 1).all()


def test_counted_hyper_latent_tables_beat_the_shared_prior(gmm, sample_pixels):
    """The shipped per-level tables code a real picture's hyper-latent in fewer bits than the factorized prior."""
    from codec.image_codec import z_frequencies

    shared = z_frequencies(gmm.model.entropy_bottleneck, gmm.z_radius)
    x = torch.from_numpy(sample_pixels[:256, :256].copy()).permute(2, 0, 1)[None].float() / 255

    def bits(frequencies, z):
        p = frequencies / frequencies.sum(axis=1, keepdims=True)
        return -np.log2(np.take_along_axis(p, z.reshape(z.shape[0], -1), axis=1)).sum()

    assert gmm.z_frequencies.shape[:2] == (gmm.levels, shared.shape[0])
    for quality in (1, gmm.levels):
        with torch.no_grad():
            _, z = gmm.model.analyse(x, torch.tensor([quality - 1.0]))
        z = (torch.round(z[0]).to(torch.int64) + gmm.z_radius).numpy()
        assert bits(gmm.z_frequencies[quality - 1], z) < 0.95 * bits(shared, z)


@pytest.mark.parametrize("quality", [2.5, 10.3])
def test_fractional_qualities_decode_with_the_tables_they_were_coded_with(gmm, sample_pixels, quality):
    """Blended hyper-latent tables on both sides: a table mismatch would decode a wrong latent, not this PSNR."""
    pixels = sample_pixels[:128, :192]
    low, _ = _round_trip(gmm, Picture.from_array(pixels), quality=float(int(quality)))
    decoded, _ = _round_trip(gmm, Picture.from_array(pixels), quality=quality)
    assert _psnr(decoded.pixels, pixels) > _psnr(low.pixels, pixels) - 0.3


def test_hyper_latent_tables_of_older_weights_and_of_a_tiny_model():
    """Counted tables have the coder's shape and no zero; weights with one table set code at every level."""
    from codec.image_codec import HyperpriorCodec, hyper_head, z_level_frequencies
    from codec.models.hyperprior import HyperpriorConfig, HyperpriorGMM
    from codec.weights import WeightsError

    torch.manual_seed(0)
    config = HyperpriorConfig(channels=8, latent_channels=8, hyper_channels=8, lambdas=(0.01, 0.1, 1.0))
    model = HyperpriorGMM(config).eval()
    crops = torch.rand(4, 3, 128, 128)
    tables = z_level_frequencies(model, crops, radius=4)
    assert tables.shape == (3, 8, 9) and tables.dtype == np.int64 and tables.min() >= 1
    state = {
        "config": {**config.__dict__, "lambdas": list(config.lambdas)},
        "model": model.state_dict(),
        "hyper_head": hyper_head(model, crops),
    }
    for frequencies in (tables, tables[0]):  # per level, and one set for every level (weights before session 12)
        codec = HyperpriorCodec(state | {"z_frequencies": frequencies}, b"\0" * 8)
        picture = Picture.from_array((np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8))
        decoded, _ = _round_trip_with(codec, picture, quality=1.5)
        assert decoded.pixels.shape == (70, 90, 3)
    with pytest.raises(WeightsError, match="hyper-latent tables of shape"):
        HyperpriorCodec(state | {"z_frequencies": tables[:2]}, b"\0" * 8)


def _round_trip_with(codec, picture, **kw):
    """A round trip through bytes with a codec that is not registered (its decode is called directly)."""
    data = serialize(codec.encode([picture], **kw)[0])
    return codec.decode([parse(data)])[0], data


@settings(max_examples=200, deadline=None)
@given(
    quality=st.floats(1.0, 11.0, width=32),
    tile=st.integers(1, 1024).map(lambda u: u * 64),
    params=st.binary(max_size=12),
)
def test_tile_parameters_round_trip_and_other_bytes_are_refused_or_read_as_written(quality, tile, params):
    """The header's quality and tile size come back as written; any other bytes are refused or, when they
    happen to be of the right size and layout, read as what they say (never an exception of another kind)."""
    from entropy import CorruptStreamError

    assert tile_params.unpack(tile_params.pack(quality, tile), "c") == (quality, tile)
    shown = tile_params.describe(tile_params.pack(quality, tile), "c")["quality"]
    assert np.float32(shown) == np.float32(quality) and len(repr(shown)) <= len(repr(quality))  # shorter, same
    try:
        q, t = tile_params.unpack(params, "c")
    except CorruptStreamError:
        assert len(params) != tile_params.PARAMS.size or params[0] != tile_params.PARAMS_LAYOUT
    else:  # read as written: the float32 and tile units of bytes 1-4 and 5-6
        assert params[0] == tile_params.PARAMS_LAYOUT and np.float32(q).tobytes() == params[1:5]
        assert t == int.from_bytes(params[5:7], "little") * tile_params.ALIGN


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 40), st.integers(1, 40), st.sampled_from([1, 3, 4])),
    seed=st.integers(0, 2**32 - 1),
    smooth=st.booleans(),
)
def test_lossless_is_exact_for_any_picture(shape, seed, smooth):
    """Every 8-bit grey, RGB and RGBA picture, noisy or smooth (where the predictor works), comes back exactly."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    if smooth:  # gradients with wrap-around edges (255 -> 0): the residuals' modulo arithmetic
        pixels = (np.add.outer(np.arange(shape[0]) * 7, np.arange(shape[1]) * 13)[:, :, None] + pixels // 32) % 256
        pixels = pixels.astype(np.uint8)
    codec = get_codec("lossless-delta")
    container = codec.encode([Picture.from_array(pixels)])[0]
    assert container.params == b"\x02"
    assert np.array_equal(codec.decode([parse(serialize(container))])[0].pixels, pixels)
    for method in (b"", b"\x01"):  # the files of earlier versions still decode
        older = codec._encode_one(Picture.from_array(pixels), method=method)
        assert np.array_equal(codec.decode([parse(serialize(older))])[0].pixels, pixels)


def test_lossless_colour_residuals_are_coded_against_green():
    """Channels that move together cost little more than one (the point of the green difference)."""
    rng = np.random.default_rng(3)
    grey = rng.integers(40, 216, (64, 64), dtype=np.uint8)
    colour = np.stack([grey + 40, grey, grey - 40], axis=2)  # the same edges, so the same prediction errors
    codec = get_codec("lossless-delta")
    size = len(serialize(codec.encode([Picture.from_array(colour)])[0]))
    one = len(serialize(codec.encode([Picture.from_array(grey)])[0]))
    assert size < one + 2 * 600  # red and blue: a table of one symbol and a few bytes each


def test_library_refuses_pillow_images_of_16_bit_files(tmp_path):
    """Pillow opens a 16-bit RGB PNG as 8-bit "RGB": checked as the file would be, by name or raw mode."""
    import io
    import struct
    import zlib

    from PIL import Image

    import codec

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = np.arange(12 * 16 * 3, dtype=">u2").reshape(12, 16 * 3) * 300
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 12, 16, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"".join(b"\0" + r.tobytes() for r in rows))) + chunk(b"IEND", b"")
    (tmp_path / "deep.png").write_bytes(png)
    for im in (Image.open(tmp_path / "deep.png"), Image.open(io.BytesIO(png))):
        assert im.mode == "RGB"
        with pytest.raises(codec.VqzError, match="16-bit"):
            codec.encode([im], model="lossless-delta")
