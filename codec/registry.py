"""The one codec registry: names users type, ids files carry, and the codecs behind them.

A codec's registry name is also the stable id written into every file it
makes, so a file always names the codec that can read it. Codecs are built
lazily (the learned ones load torch and their weights on first use), and at
most once per process.
"""

from __future__ import annotations

import abc
import importlib
import numbers
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from bitstream import Container, MediaKind
from codec.errors import InvalidRequestError, UnknownCodecError, WeightsMismatchError
from codec.media import Picture

#: `progress(done, total)`: called as coding advances (units are the codec's: tiles, or pictures), so
#: a caller can show how far a long job has got; `done == total` when the call is complete.
Progress = Callable[[int, int], object]


class ImageCodec(abc.ABC):
    """What every image codec offers: batched encode to containers, batched decode."""

    codec_id: str
    description: str = ""
    lossless: bool = False
    #: number of quality levels (1..levels); 0 for codecs without a quality knob
    levels: int = 0
    #: whether a fractional quality is a rate point of its own (else it rounds down to a level)
    interpolates: bool = False

    @property
    def weights_digest(self) -> bytes:
        """First 8 bytes of the SHA-256 of the weights file (zeros without weights)."""
        return bytes(8)

    @abc.abstractmethod
    def encode(
        self,
        pictures: Sequence[Picture],
        quality: float | None = None,
        device: str = "cpu",
        progress: Progress | None = None,
    ) -> list[Container]:
        """One container per picture."""

    @abc.abstractmethod
    def decode(
        self, containers: Sequence[Container], device: str = "cpu", progress: Progress | None = None
    ) -> list[Picture]:
        """One picture per container (each already checked with `check`)."""

    def check_options(
        self, quality: float | None = None, device: object = "cpu", target_bpp: float | None = None
    ) -> None:
        """Refuse options this codec cannot serve, before any picture is read.

        `encode` and `encode_to_bpp` make the same checks; the CLI calls this
        once, up front, so that an option error is never reported as the
        failure of an input file. Subclasses add their quality range.
        """
        device_name(device)
        if target_bpp is None:
            return
        if not self.levels:
            raise InvalidRequestError(f"{self.codec_id} has no quality setting, so a target bpp does not apply")
        if not isinstance(target_bpp, numbers.Real) or isinstance(target_bpp, bool):
            raise InvalidRequestError(f"a target bpp is a number, not a {type(target_bpp).__name__}")
        if not target_bpp > 0:
            raise InvalidRequestError(f"a target of {target_bpp:g} bpp: it must be positive")

    def encode_to_bpp(
        self, picture: Picture, target_bpp: float, device: str = "cpu", progress: Progress | None = None
    ) -> Container:
        """The highest quality whose whole file is at most `target_bpp` bits per pixel.

        Bisection over the continuous quality range (file size grows with
        quality). If even the lowest quality is larger, the request cannot be
        met and is refused (the message says what the lowest quality gives).
        `progress` counts the attempts' work as if all `attempts()` were made
        (the search may end sooner; it then reports completion).
        """
        self.check_options(device=device, target_bpp=target_bpp)
        from bitstream import serialize

        made = 0

        def attempt(q: float) -> tuple[Container, float]:
            nonlocal made

            def report(done: int, total: int) -> None:
                progress(made * total + done, self.attempts() * total)

            c = self.encode([picture], quality=q, device=device, progress=report if progress else None)[0]
            made += 1
            return c, 8 * len(serialize(c)) / picture.info.pixels

        best = self._search_bpp(attempt, target_bpp)
        if progress is not None:
            progress(1, 1)
        return best

    #: halvings of the quality range a --target-bpp search makes at most, after trying both ends
    BISECTIONS = 8

    def attempts(self) -> int:
        """Encodes a --target-bpp search makes at most: both ends, then the halvings (fewer where the
        codec has only whole levels: a 6-level one needs 3, not 8)."""
        if self.interpolates:
            return 2 + self.BISECTIONS
        return 2 + min(self.BISECTIONS, max(self.levels - 2, 0).bit_length())

    def _search_bpp(self, attempt: Callable[[float], tuple[Container, float]], target_bpp: float) -> Container:
        best, bpp = attempt(1.0)
        if bpp > target_bpp:
            raise InvalidRequestError(
                f"a target of {target_bpp:g} bpp is out of reach: {self.codec_id}'s lowest quality gives {bpp:.4f} bpp"
            )
        top, top_bpp = attempt(float(self.levels))
        if top_bpp <= target_bpp:
            return top
        lo, hi = 1.0, float(self.levels)
        for _ in range(self.BISECTIONS):  # quality resolution (levels - 1) / 256
            # A codec that rounds qualities down has nothing between two adjacent levels to try.
            mid = (lo + hi) / 2 if self.interpolates else float((int(lo) + int(hi)) // 2)
            if mid == lo:
                break
            c, b = attempt(mid)
            if b <= target_bpp:
                lo, best = mid, c
            else:
                hi = mid
        return best

    def check(self, container: Container) -> None:
        """Refuse a file made by another codec or with other weights."""
        if container.codec_id != self.codec_id:
            raise UnknownCodecError(f"file was made by codec {container.codec_id!r}, not {self.codec_id!r}")
        if container.media_kind != MediaKind.IMAGE:
            raise UnknownCodecError(
                f"{self.codec_id} decodes images, this file holds {container.media_kind.name.lower()}"
            )
        if container.weights_digest != self.weights_digest:
            raise WeightsMismatchError(
                f"file was made with {self.codec_id} weights {container.weights_digest.hex()}, "
                f"but the installed weights are {self.weights_digest.hex()} (decode it with the vqz that made it, "
                "or encode the original again)"
            )


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "module:attribute" of a zero-argument factory
    description: str
    # "module:function" (params bytes, codec id) -> dict, reading the header's parameters without the model
    parameters: str = ""


_ENTRIES: dict[str, Entry] = {}
_BUILT: dict[str, ImageCodec] = {}
DEFAULT_IMAGE_CODEC = "hyperprior-gmm"


def register(name: str, target: str, description: str, parameters: str = "") -> None:
    if name in _ENTRIES:
        raise ValueError(f"codec {name!r} is already registered")
    _ENTRIES[name] = Entry(name, target, description, parameters)


def parameters(container: Container) -> dict[str, float | int]:
    """The coding parameters in `container`'s header (quality, tile size) as plain data, read without
    building its codec (so `vqz info` loads no model); empty for codecs without any, or unknown ones."""
    entry = _ENTRIES.get(container.codec_id)
    if entry is None or not entry.parameters or container.media_kind != MediaKind.IMAGE:
        return {}
    module, attribute = entry.parameters.split(":")
    return getattr(importlib.import_module(module), attribute)(container.params, container.codec_id)


def entries() -> list[Entry]:
    return sorted(_ENTRIES.values(), key=lambda e: e.name)


def device_name(device: object) -> str:
    """`device` ("cpu", "cuda", "cuda:N", a torch.device; None is the CPU) as a checked name; needs no torch."""
    name = "cpu" if device is None else str(device) if type(device).__name__ == "device" else device
    if not isinstance(name, str) or not (name in ("cpu", "cuda") or re.fullmatch(r"cuda:\d+", name)):
        raise InvalidRequestError(f"unknown device {device!r} (cpu, cuda or cuda:N)")
    return name


def check_device(device: object) -> str:
    """`device_name`, and for a GPU one that this machine has (torch is imported only then)."""
    name = device_name(device)
    if name.startswith("cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(name.partition(":")[2] or 0) >= count:
            has = f"{count} CUDA device{'s' if count > 1 else ''}" if count else "no CUDA device"
            raise InvalidRequestError(f"device {name} was asked for, but this machine has {has}")
    return name


def get_codec(name: str | None = None) -> ImageCodec:
    """The codec registered under `name` (the default image codec if None)."""
    if name is not None and not isinstance(name, str):
        raise InvalidRequestError(f"a codec is named by a string, not a {type(name).__name__}")
    name = DEFAULT_IMAGE_CODEC if name is None else name
    if name not in _ENTRIES:
        known = ", ".join(e.name for e in entries())
        raise UnknownCodecError(f"unknown codec {name!r} (known: {known})")
    if name not in _BUILT:
        module, attribute = _ENTRIES[name].target.split(":")
        _BUILT[name] = getattr(importlib.import_module(module), attribute)()
    return _BUILT[name]


def codec_for(container: Container) -> ImageCodec:
    """The codec that reads `container`, after checking the file's weights digest."""
    if container.codec_id not in _ENTRIES:
        raise UnknownCodecError(f"file was made by codec {container.codec_id!r}, which this vqz does not have")
    codec = get_codec(container.codec_id)
    codec.check(container)
    return codec


register(
    "hyperprior-gmm",
    "codec.image_codec:default_codec",
    "learned lossy image codec: GDN transforms, Gaussian-mixture hyperprior, one variable-rate model",
    parameters="codec.tile_params:describe",
)
register(
    "vq-mcq",
    "codec.vq_codec:default_codec",
    "learned lossy image codec for low rates: multi-codebook key-value VQ at three levels, 7 rate points",
    parameters="codec.tile_params:describe",
)
register(
    "lossless-delta",
    "codec.lossless:LosslessDelta",
    "exact image codec without weights: median-edge prediction, colour-difference residuals, static tables",
    parameters="codec.lossless:describe",
)
