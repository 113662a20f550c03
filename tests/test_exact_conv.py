"""The integer hyper-synthesis head: exact whatever the threads, close to the float convolution it replaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from codec.models.exact_conv import EXACT_LIMIT, ExactConv2d, ExactConvError, _float32_gemm_is_ieee, quantise_conv


def _conv(cin: int, cout: int, seed: int) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(cin, cout, 3, padding=1)


def _integer_reference(head: ExactConv2d, x: torch.Tensor) -> torch.Tensor:
    """The same integer convolution in float64 (exact: every value is far below 2^53)."""
    q = torch.clamp(torch.round(x / head.step), -head.levels, head.levels)
    k = head.kernel
    weight = head.matrix.to(torch.float64).view(head.matrix.shape[0], -1, k, k)
    sums = F.conv2d(q, weight, padding=k // 2)
    return sums * head.out_scale.view(1, -1, 1, 1) + head.bias.view(1, -1, 1, 1)


@settings(max_examples=25, deadline=None)
@given(
    cin=st.integers(1, 24),
    cout=st.integers(1, 40),
    seed=st.integers(0, 2**16),
    spread=st.floats(0.1, 50.0),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
)
def test_exact_in_any_thread_count_and_precision_setting(cin, cout, seed, spread, height, width):
    conv = _conv(cin, cout, seed)
    head = ExactConv2d(quantise_conv(conv, torch.full((cin,), spread)))
    # inputs up to twice the calibrated range: clamping is part of the exact recipe
    x = torch.rand(2, cin, height, width, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) - 0.5
    x *= 4 * spread
    before_threads, before_precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
    try:
        torch.set_num_threads(1)
        one = head(x)
        torch.set_num_threads(2)
        two = head(x)
        torch.set_float32_matmul_precision("medium")  # a caller allowing bf16 products must not break exactness
        assert not _float32_gemm_is_ieee()  # (this CPU may have no bf16 products: check the switch itself too)
        three = head(x)
        assert torch.get_float32_matmul_precision() == "medium"  # and the setting is left alone
    finally:
        torch.set_num_threads(before_threads)
        torch.set_float32_matmul_precision(before_precision)
    assert torch.equal(one, two) and torch.equal(one, three)
    # the float32 sums are exact: the same integers summed in float64 agree to the last bit
    assert torch.allclose(one, _integer_reference(head, x), rtol=0, atol=1e-9 * float(one.abs().max()) + 1e-12)


@pytest.mark.skipif(not hasattr(torch.backends.mkldnn, "matmul"), reason="torch before 2.9: no per-backend precision")
def test_exact_under_the_newer_precision_switch():
    head = ExactConv2d(quantise_conv(_conv(32, 16, 3), torch.full((32,), 4.0)))
    x = torch.randn(1, 32, 6, 7, dtype=torch.float64) * 4
    want = head(x)
    before = torch.backends.mkldnn.matmul.fp32_precision
    try:
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        assert not _float32_gemm_is_ieee()
        got = head(x)
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = before
    assert torch.equal(want, got) and _float32_gemm_is_ieee()


def test_the_exactness_bound_holds_and_is_checked():
    conv = _conv(96, 64, 0)
    state = quantise_conv(conv, torch.full((96,), 5.0))
    row_sums = state["weight"].abs().to(torch.int64).sum(dim=(1, 2, 3))
    assert int(row_sums.max()) * int(state["levels"]) <= EXACT_LIMIT
    assert int(state["weight"].abs().max()) == 127  # 8-bit weights
    broken = dict(state, levels=state["levels"] * 2)
    with pytest.raises(ExactConvError, match="exactness bound"):
        ExactConv2d(broken)
    with pytest.raises(ExactConvError, match="int8"):
        ExactConv2d(dict(state, weight=state["weight"].float()))
    with pytest.raises(ExactConvError, match="step"):
        ExactConv2d(dict(state, step=state["step"][:-1]))


def test_close_to_the_float_convolution_inside_the_calibrated_range():
    conv = _conv(96, 128, 1).double()
    reach = torch.linspace(0.5, 12.0, 96, dtype=torch.float64)
    head = ExactConv2d(quantise_conv(conv, reach))
    x = (torch.rand(1, 96, 12, 10, dtype=torch.float64) * 2 - 1) * reach.view(1, -1, 1, 1)
    with torch.no_grad():
        want = conv(x)
    # 8-bit weights: each is off by up to 1/254 of its row's largest; outputs by under 1% (rms; 0.65% here)
    error = (head(x) - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt()
    assert error < 1e-2


def test_the_shipped_codec_uses_the_integer_head():
    from codec.registry import get_codec

    gmm = get_codec("hyperprior-gmm")
    assert isinstance(gmm._hyper_synthesis[-1], ExactConv2d)
    assert gmm._hyper_synthesis[-1].matrix.shape[0] == 3 * gmm.config.mixtures * gmm.config.latent_channels


def test_weights_without_the_head_are_refused():
    from codec.image_codec import HyperpriorCodec, hyper_head
    from codec.models.hyperprior import HyperpriorConfig, HyperpriorGMM
    from codec.weights import WeightsError

    config = HyperpriorConfig(channels=8, latent_channels=8, hyper_channels=8, lambdas=(0.01, 0.1))
    model = HyperpriorGMM(config).eval()
    state = {
        "config": {**config.__dict__, "lambdas": list(config.lambdas)},
        "model": model.state_dict(),
        "z_frequencies": np.ones((8, 9), np.int64),
    }
    with pytest.raises(WeightsError, match="integer hyper-synthesis head"):
        HyperpriorCodec(state, b"\0" * 8)
    state["hyper_head"] = hyper_head(model, torch.rand(3, 3, 64, 64))
    codec = HyperpriorCodec(state, b"\0" * 8)
    assert isinstance(codec._hyper_synthesis[-1], ExactConv2d)
