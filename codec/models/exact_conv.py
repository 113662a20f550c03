"""A convolution whose arithmetic is exact: integer weights and activations summed in float32.

The hyper-synthesis computes the mixture parameters that both the encoder
and the decoder turn into probability tables, so its output must not depend
on the machine or the thread count. Its last convolution (96 -> 3*K*M
channels, 3x3) used to run in float64 for that reason and was a quarter of
the decode time. Here it runs on integers instead:

- activations are rounded to a per-channel grid (step = calibrated maximum /
  A) and clamped to [-A, A];
- each output channel's weights are rounded to 8-bit integers (stored as
  int8), with a float64 scale applied afterwards;
- A is chosen so that for every output, sum(|weights|) * A <= 2^24. Every
  product and every partial sum is then an integer a float32 holds exactly,
  so a float32 GEMM gives the exact result in ANY summation order (threads,
  BLAS blocking, CPU model). Integers, not float64 luck, make the tables
  reproducible (../shared/DESIGN.md, "Determinism").

A float32 GEMM is twice as fast as float64 on this machine. The cost is the
rounding of weights and activations: measured on five Kodak images at
qualities 1, 4, 7, 11, the files changed by -0.07% to 0.00% (distortion is
untouched: only the probability tables change; docs/models.md, "Coding").
Values beyond the calibrated range are clamped: they cost bits, never
correctness.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

WEIGHT_LIMIT = 127  # 8-bit weights: int8 storage (9 or 10 bits measured no better, see docs/models.md)
EXACT_LIMIT = 1 << 24  # float32 holds every integer up to this magnitude exactly
ACTIVATION_MARGIN = 1.1  # the grid reaches 10% beyond the largest calibrated activation


class ExactConvError(ValueError):
    """Stored integer-convolution parameters are inconsistent (the exactness bound fails)."""


def quantise_conv(conv: nn.Conv2d, activation_max: torch.Tensor) -> dict:
    """Integer parameters of `conv` (stride 1, 'same' padding) for inputs within +-activation_max per channel.

    Returns the state that `ExactConv2d` loads: int8 weights (O, C, k, k),
    float64 per-output scale and bias, float64 per-channel activation step,
    and the activation bound A (int64 scalar).
    """
    if conv.stride != (1, 1) or conv.padding != (conv.kernel_size[0] // 2, conv.kernel_size[1] // 2):
        raise ValueError("only stride-1 convolutions with 'same' padding are supported")
    w = conv.weight.detach().to(torch.float64)
    reach = activation_max.detach().to(torch.float64).clamp_min(1e-6) * ACTIVATION_MARGIN
    scaled = w * reach.view(1, -1, 1, 1)  # weight times its input's range
    row_scale = scaled.abs().amax(dim=(1, 2, 3)).clamp_min(1e-30) / WEIGHT_LIMIT
    w_int = torch.round(scaled / row_scale.view(-1, 1, 1, 1))
    levels = EXACT_LIMIT // max(1, int(w_int.abs().sum(dim=(1, 2, 3)).max().item()))
    if levels < 1:
        raise ValueError("the convolution has too many inputs for an exact float32 sum")
    # out_o = sum w a ~ sum (scaled / levels) q = row_scale_o / levels * sum w_int q, with a ~ reach / levels * q
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros(w.shape[0])
    return {
        "weight": w_int.to(torch.int8),
        "out_scale": row_scale / levels,
        "bias": bias.to(torch.float64),
        "step": reach / levels,
        "levels": torch.tensor(levels, dtype=torch.int64),
    }


def _float32_gemm_is_ieee() -> bool:
    """Whether float32 CPU matrix products run in full IEEE precision now.

    A caller may have allowed bf16 or TF32 products (``set_float32_matmul_precision``
    or the newer ``torch.backends.mkldnn.matmul.fp32_precision``); those would
    round the integers, so `ExactConv2d` then sums in float64 instead: the same
    exact result, slower. Nothing global is changed, so threads cannot race.
    """
    try:
        mkldnn = torch.backends.mkldnn
        chain = (mkldnn.matmul.fp32_precision, mkldnn.fp32_precision, torch.backends.fp32_precision)
    except AttributeError:  # torch before 2.9 has only the legacy switch
        return torch.get_float32_matmul_precision() == "highest"
    return next((setting for setting in chain if setting != "none"), "ieee") == "ieee"


class ExactConv2d(nn.Module):
    """Inference-only stride-1 convolution on integers; float64 in, float64 out, CPU."""

    def __init__(self, state: dict):
        super().__init__()
        weight = state["weight"]
        if weight.dtype != torch.int8 or weight.dim() != 4 or weight.shape[2] != weight.shape[3]:
            raise ExactConvError("integer convolution weights must be int8 (O, C, k, k)")
        out_ch, in_ch, k, _ = weight.shape
        levels = int(state["levels"])
        if levels < 1 or int(weight.abs().to(torch.int64).sum(dim=(1, 2, 3)).max()) * levels > EXACT_LIMIT:
            raise ExactConvError("integer convolution parameters break the exactness bound")
        shapes = {"out_scale": (out_ch,), "bias": (out_ch,), "step": (in_ch,)}
        for name, shape in shapes.items():
            if tuple(state[name].shape) != shape:
                raise ExactConvError(f"integer convolution {name} has shape {tuple(state[name].shape)}, not {shape}")
        self.kernel = k
        self.levels = levels
        self.register_buffer("matrix", weight.reshape(out_ch, -1).to(torch.float32))
        self.register_buffer("out_scale", state["out_scale"].to(torch.float64).view(1, -1, 1))
        self.register_buffer("bias", state["bias"].to(torch.float64).view(1, -1, 1))
        self.register_buffer("step", state["step"].to(torch.float64).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        out = torch.empty(b, self.matrix.shape[0], h * w, dtype=torch.float64)
        dtype = torch.float32 if _float32_gemm_is_ieee() else torch.float64
        matrix = self.matrix.to(dtype)
        for i in range(b):  # one image at a time: the float32 columns and sums of a batch of big tiles are large
            q = torch.clamp(torch.round(x[i : i + 1] / self.step), -self.levels, self.levels).to(dtype)
            columns = F.unfold(q, self.kernel, padding=self.kernel // 2)[0]  # (C*k*k, H*W), zero padding = q 0
            sums = torch.matmul(matrix, columns)  # integers: exact in any summation order
            torch.addcmul(self.bias[0], sums.to(torch.float64), self.out_scale[0], out=out[i])
        return out.view(b, -1, h, w)
