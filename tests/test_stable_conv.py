"""The coding-time convolution: oneDNN's at every size, so decoded pixels do not depend on the thread count."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from codec.models.stable_conv import StableConv2d, stable

onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")


def _stable(cin: int, cout: int, k: int, stride: int = 1) -> StableConv2d:
    torch.manual_seed(cin * 1000 + cout)
    return stable(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)).eval()


@onednn
@pytest.mark.parametrize(
    "cin, cout, k, size",
    [(96, 384, 3, (8, 12)), (96, 384, 3, (4, 6)), (192, 768, 3, (8, 12)), (64, 12, 3, (2, 3)), (12, 32, 3, (1, 1))],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_same_bits_at_any_thread_count(cin, cout, k, size, channels_last):
    """The sizes PyTorch sends to its own im2col path, where 96 -> 384 over 8 x 12 changed with the threads."""
    conv = _stable(cin, cout, k)
    x = torch.randn(1, cin, *size, generator=torch.Generator().manual_seed(1))
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    before = torch.get_num_threads()
    outs = []
    try:
        with torch.no_grad():
            for threads in range(1, 8):
                torch.set_num_threads(threads)
                outs.append(conv(x))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(outs[0], other) for other in outs[1:])
    assert torch.allclose(outs[0], F.conv2d(x, conv.weight, conv.bias, padding=k // 2), atol=1e-4, rtol=1e-4)


@onednn
def test_small_inputs_go_to_onednn():
    conv, x = _stable(96, 384, 3), torch.randn(1, 96, 8, 12)
    with torch.no_grad(), torch.profiler.profile() as prof:
        conv(x)
    ops = {e.name for e in prof.events()}
    assert "aten::mkldnn_convolution" in ops and "aten::_slow_conv2d_forward" not in ops


def test_training_is_an_ordinary_convolution():
    """With gradients wanted it is nn.Conv2d's path: the same values and gradients."""
    conv = _stable(8, 16, 3, stride=2).train()
    plain = nn.Conv2d(8, 16, 3, stride=2, padding=1)
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(2, 8, 9, 7, requires_grad=True)
    conv(x).square().sum().backward()
    ours = x.grad.clone(), conv.weight.grad.clone()
    x.grad = None
    plain(x).square().sum().backward()
    assert torch.equal(ours[0], x.grad) and torch.equal(ours[1], plain.weight.grad)
    assert torch.equal(conv(x), plain(x))


def test_an_unbatched_input_is_nn_conv2ds_to_handle():
    conv = _stable(4, 6, 3).eval()
    x = torch.randn(4, 9, 7)
    with torch.no_grad():
        assert torch.equal(conv(x), F.conv2d(x[None], conv.weight, conv.bias, padding=1)[0])


def test_stable_copies_shape_and_parameters():
    conv = nn.Conv2d(6, 10, 5, stride=2, padding=2, bias=False)
    copy = stable(conv)
    assert isinstance(copy, StableConv2d) and copy.bias is None and copy.stride == (2, 2) and copy.padding == (2, 2)
    assert torch.equal(copy.weight, conv.weight) and copy.weight is not conv.weight
    with torch.no_grad():
        x = torch.randn(1, 6, 11, 13)
        assert torch.allclose(copy(x), conv(x), atol=1e-5)


def test_inside_torch_compile_it_is_an_ordinary_convolution(monkeypatch):
    """The compiler's fake tensors cannot run the oneDNN call (a compiled no-grad forward failed with it)."""
    conv, x = _stable(96, 384, 3), torch.randn(1, 96, 8, 12)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with torch.no_grad(), torch.profiler.profile() as prof:
        conv(x)
    assert "aten::mkldnn_convolution" not in {e.name for e in prof.events()}
