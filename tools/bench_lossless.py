"""Benchmark of the exact codec on Kodak: file sizes against PNG and WebP's lossless mode, and speed.

    vqz bench lossless [--kodak DIR] [--repeats 3] [--json]

Per image, whole-file bits per pixel of `lossless-delta` (the median-edge
method it writes, and the left-delta method of its earlier files), of PNG
(Pillow, optimize=True: its smallest) and of WebP lossless (Pillow,
method 6, quality 100: libwebp's slowest, smallest); the totals over all
images; and the median encode / decode times of lossless-delta and of
the two others, measured in the same run (WebP's encode, about 8 s an
image at this effort, once).
"""

from __future__ import annotations

import io
import json
import statistics
from pathlib import Path

import click
import numpy as np
from PIL import Image

from bitstream import parse, serialize
from codec.media import read_image
from codec.registry import get_codec
from tools.bench_entropy import _timed
from tools.options import KODAK


def run(kodak: Path, repeats: int) -> dict:
    codec = get_codec("lossless-delta")
    images = sorted(kodak.glob("*.png"))
    rows = []
    for path in images:
        picture = read_image(path)
        pixels = picture.info.pixels
        im = Image.fromarray(picture.pixels)
        codec.decode([codec.encode([picture])[0]])  # untimed warm-up (numba's first call compiles)
        container, encode_s = _timed(lambda: codec.encode([picture])[0], repeats)
        data = serialize(container)
        decoded, decode_s = _timed(lambda: codec.decode([parse(data)])[0], repeats)
        assert np.array_equal(decoded.pixels, picture.pixels), path.name
        row = {
            "image": path.name,
            "vqz_bpp": 8 * len(data) / pixels,
            "vqz_left_delta_bpp": 8 * len(serialize(codec._encode_one(picture, method=b""))) / pixels,
            "vqz_encode_s": encode_s,
            "vqz_decode_s": decode_s,
        }
        for name, fmt, options in (
            ("png", "PNG", {"optimize": True}),
            ("webp_lossless", "WEBP", {"lossless": True, "quality": 100, "method": 6}),
        ):

            def encode(fmt=fmt, options=options) -> bytes:
                out = io.BytesIO()
                im.save(out, format=fmt, **options)
                return out.getvalue()

            once = name == "webp_lossless"  # about 8 s an image at this effort: timed once
            coded, row[f"{name}_encode_s"] = _timed(encode, 1 if once else repeats)
            _, row[f"{name}_decode_s"] = _timed(lambda c=coded: np.asarray(Image.open(io.BytesIO(c))), repeats)
            row[f"{name}_bpp"] = 8 * len(coded) / pixels
        rows.append(row)
    keys = [k for k in rows[0] if k != "image"]
    summary = {k: (statistics.mean if k.endswith("bpp") else statistics.median)(r[k] for r in rows) for k in keys}
    return {"images": len(rows), "repeats": repeats, "mean_bpp_and_median_times": summary, "per_image": rows}


@click.command()
@click.option("--kodak", type=click.Path(path_type=Path), default=KODAK, show_default=True)
@click.option("--repeats", default=3, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def main(kodak: Path, repeats: int, as_json: bool) -> None:
    """lossless-delta on Kodak against PNG and WebP lossless: bits per pixel and times."""
    r = run(kodak, repeats)
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    s = r["mean_bpp_and_median_times"]
    for name in ("vqz", "vqz_left_delta", "png", "webp_lossless"):
        line = f"{name:15s} {s[f'{name}_bpp']:.3f} bpp"
        if f"{name}_encode_s" in s:
            line += f", encode {s[f'{name}_encode_s']:.3f} s, decode {s[f'{name}_decode_s']:.3f} s"
        click.echo(line)


if __name__ == "__main__":
    main()
