"""Golden vectors: they decode to the recorded pixels, forever; damaged copies fail cleanly."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from conftest import VECTORS

from bitstream import Chunk, VqzError, parse, serialize
from codec.registry import codec_for
from tools.make_vectors import pixel_digest


def _decode(data: bytes):
    container = parse(data)
    return codec_for(container).decode([container])[0]


def test_every_vector_decodes_to_its_checksum(vector_index):
    assert len(vector_index) >= 6
    for name, entry in vector_index.items():
        picture = _decode((VECTORS / entry["file"]).read_bytes())
        assert list(picture.pixels.shape) == entry["shape"], name
        assert pixel_digest(picture) == entry["decoded_sha256"], name


def test_every_lossless_method_pins_the_same_pictures(vector_index):
    """Each picture has a vector of each method (left delta: no parameters; median edge: 1, and 2, which the
    encoder writes): the older files keep decoding, and all give the picture exactly."""
    for name in ("rgb_33x17", "grey_7x5", "rgba_16x16", "rgb_1x1"):
        entries = [vector_index[f"lossless_{method}{name}"] for method in ("", "med_", "med2_")]
        assert len({e["decoded_sha256"] for e in entries}) == 1, name
        params = [parse((VECTORS / e["file"]).read_bytes()).params for e in entries]
        assert params == [b"", b"\x01", b"\x02"], name


def _mutations(data: bytes, rng: np.random.Generator, count: int):
    for _ in range(count):
        kind = rng.integers(4)
        if kind == 0:  # truncation
            yield data[: rng.integers(len(data))]
        elif kind == 1:  # bit flips
            d = bytearray(data)
            for _ in range(rng.integers(1, 4)):
                d[rng.integers(len(d))] ^= 1 << rng.integers(8)
            yield bytes(d)
        elif kind == 2:  # damaged payload in a well-formed container: reaches the codec's own parser
            c = parse(data)
            i = rng.integers(len(c.chunks))
            payload = bytearray(c.chunks[i].data)
            if payload and rng.random() < 0.7:
                for _ in range(rng.integers(1, 6)):
                    payload[rng.integers(len(payload))] = rng.integers(256)
            else:
                payload = payload[: rng.integers(len(payload) + 1)]
            c.chunks[i] = Chunk(c.chunks[i].kind, bytes(payload))
            yield serialize(c)
        else:  # garbage appended or inserted
            cut = rng.integers(len(data))
            yield data[:cut] + rng.integers(0, 256, rng.integers(1, 16), dtype=np.uint8).tobytes() + data[cut:]


@pytest.mark.parametrize(
    "name",
    [
        "lossless_rgb_33x17",
        "lossless_grey_7x5",
        "lossless_rgba_16x16",
        "lossless_rgb_1x1",
        "lossless_med_rgb_33x17",
        "lossless_med_grey_7x5",
        "lossless_med_rgba_16x16",
        "lossless_med_rgb_1x1",
        "lossless_med2_rgb_33x17",
        "lossless_med2_grey_7x5",
        "lossless_med2_rgba_16x16",
        "lossless_med2_rgb_1x1",
        "hyperprior_rgb_80x48",
        "vq_rgb_96x70",
    ],
)
def test_fuzzed_vectors_raise_only_documented_errors(vector_index, name):
    """18,000 damaged files over the lossless vectors (a few hundred for each learned one)."""
    data = (VECTORS / vector_index[name]["file"]).read_bytes()
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    count = 400 if name.startswith(("hyperprior", "vq")) else 1000 if name.startswith("lossless_med") else 2500
    outcomes = {"error": 0, "decoded": 0}
    for damaged in _mutations(data, rng, count):
        try:
            picture = _decode(damaged)
        except VqzError:
            outcomes["error"] += 1
        else:
            assert picture.pixels.dtype == np.uint8
            outcomes["decoded"] += 1
    assert outcomes["error"] > count // 2
