"""(Re)generates the golden vectors in tests/vectors/.

    python -m tools.make_vectors

Each vector is a small .vqz file plus, in vectors.json, the sha256 of the
pixels it must decode to (and its codec and weights digest). The
`lossless-delta` vectors have no weights and must decode forever: never
regenerate them, add new ones. The `hyperprior-gmm` and `vq-mcq` vectors
belong to the weights they name: they are regenerated (on purpose, in the
same commit) when the shipped weights change, see tests/vectors/README.md.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from bitstream import serialize
from codec.media import Picture, read_image
from codec.registry import get_codec

VECTORS = Path(__file__).resolve().parents[1] / "tests" / "vectors"
SAMPLE = Path(__file__).resolve().parents[1] / "codec" / "samples" / "parrots.png"


def pixel_digest(picture: Picture) -> str:
    p = picture.pixels
    return hashlib.sha256(np.asarray(p.shape, np.int64).tobytes() + p.tobytes()).hexdigest()


def _pictures() -> dict[str, tuple[str, Picture]]:
    parrots = read_image(SAMPLE).pixels
    rng = np.random.default_rng(7)
    rgba = np.concatenate([parrots[:16, :16], rng.integers(0, 256, (16, 16, 1), dtype=np.uint8)], axis=2)
    return {
        "lossless_grey_7x5": ("lossless-delta", Picture.from_array(parrots[:5, :7, 1])),
        "lossless_rgb_33x17": ("lossless-delta", Picture.from_array(parrots[100:117, 100:133])),
        "lossless_rgba_16x16": ("lossless-delta", Picture.from_array(rgba)),
        "lossless_rgb_1x1": ("lossless-delta", Picture.from_array(parrots[:1, :1])),
        # session 15's median-edge methods: lossless_med_* were made with method 1 (blue against green),
        # lossless_med2_* with method 2 (blue against the mean of red and green), which the encoder writes;
        # the ones above are the left-delta method's. All stay as they are.
        "lossless_med_grey_7x5": ("lossless-delta", Picture.from_array(parrots[:5, :7, 1])),
        "lossless_med_rgb_33x17": ("lossless-delta", Picture.from_array(parrots[100:117, 100:133])),
        "lossless_med_rgba_16x16": ("lossless-delta", Picture.from_array(rgba)),
        "lossless_med_rgb_1x1": ("lossless-delta", Picture.from_array(parrots[:1, :1])),
        "lossless_med2_grey_7x5": ("lossless-delta", Picture.from_array(parrots[:5, :7, 1])),
        "lossless_med2_rgb_33x17": ("lossless-delta", Picture.from_array(parrots[100:117, 100:133])),
        "lossless_med2_rgba_16x16": ("lossless-delta", Picture.from_array(rgba)),
        "lossless_med2_rgb_1x1": ("lossless-delta", Picture.from_array(parrots[:1, :1])),
        "hyperprior_rgb_80x48": ("hyperprior-gmm", Picture.from_array(parrots[64:112, 96:176])),
        "vq_rgb_96x70": ("vq-mcq", Picture.from_array(parrots[40:110, 80:176])),
    }


def main(only_learned: bool = False) -> None:
    index_path = VECTORS / "vectors.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    for name, (codec_name, picture) in _pictures().items():
        if codec_name == "lossless-delta" and name in index:  # golden forever: never made again
            continue
        if only_learned and codec_name == "lossless-delta":
            continue
        codec = get_codec(codec_name)
        container = codec.encode([picture], quality=3 if codec.levels else None)[0]
        data = serialize(container)
        decoded = codec.decode([container])[0]
        (VECTORS / f"{name}.vqz").write_bytes(data)
        index[name] = {
            "file": f"{name}.vqz",
            "codec": codec_name,
            "weights_digest": container.weights_digest.hex(),
            "decoded_sha256": pixel_digest(decoded),
            "shape": list(decoded.pixels.shape),
        }
        if codec.lossless:
            assert np.array_equal(decoded.pixels, picture.pixels)
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    print(f"wrote {len(index)} vectors to {VECTORS}")


if __name__ == "__main__":
    import sys

    main(only_learned="--learned-only" in sys.argv)
