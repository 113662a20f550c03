"""Errors of the codec layer, in vqz's one hierarchy (rooted at `VqzError`)."""

from __future__ import annotations

from bitstream.errors import VqzError


class CodecError(VqzError):
    """A request the codecs cannot serve."""


class UnknownCodecError(CodecError):
    """No codec of that name is registered."""


class WeightsMismatchError(CodecError):
    """The file was made with other weights than the ones installed."""


class UnsupportedMediaError(CodecError):
    """The input is not a picture (or sound) the chosen codec can code without loss of meaning."""


class InvalidRequestError(CodecError):
    """An option is out of range (quality, target bpp, device...)."""
