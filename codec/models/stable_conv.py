"""A 2-D convolution whose CPU inference result does not depend on the thread count.

PyTorch runs a float32 CPU convolution through oneDNN only when it judges
the work large enough; a small one (e.g. 96 -> 384 channels over the 8 x 12
latent of a Kodak-sized picture's coarsest VQ level, or any layer of a tiny
picture) goes to its own im2col + BLAS path instead, whose sums change order
with the thread count: on an AVX-512 machine (session 16) that layer gave
other values at 2, 4, 5, 6, 7 and 8 threads than at 1 and 3, and a decoded
pixel moved by one. oneDNN's forward convolutions gave the same bits at 1
to 8 threads for every layer shape of both models at sizes from 1 x 1 to
64 x 64 (and session 13 found the same on an AVX2 machine at 1 to 16), so
the coding-time copies call oneDNN for every size.

Training is untouched: with gradients wanted, off the CPU, inside
`torch.compile`, or where oneDNN is absent, this is an ordinary
`nn.Conv2d`.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def _onednn_serves(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    wanted = [x, weight] + ([] if bias is None else [bias])
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() == 4  # (an unbatched picture is nn.Conv2d's to handle)
        and torch.backends.mkldnn.is_available()
        and not torch.compiler.is_compiling()  # (the compiler cannot trace the oneDNN call; training compiles)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in wanted))
    )


class StableConv2d(nn.Conv2d):
    """`nn.Conv2d` (zero padding, numeric padding) that runs on oneDNN at every size in CPU inference."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str) or not _onednn_serves(x, weight, bias):
            return super()._conv_forward(x, weight, bias)
        return torch.mkldnn_convolution(x, weight, bias, self.padding, self.stride, self.dilation, self.groups)


def stable(conv: nn.Conv2d) -> StableConv2d:
    """A `StableConv2d` with `conv`'s shape and parameters (its own copies)."""
    out = StableConv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    out.load_state_dict(conv.state_dict())
    return out
