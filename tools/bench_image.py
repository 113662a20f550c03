"""Benchmarks of the image codec: speed against CompressAI, and tiling (seams, memory).

    python -m tools.bench_image speed [--images 24] [--repeats 5] [--json]
    python -m tools.bench_image tiles [--json]

speed: per Kodak image, the median of R runs of our whole encode (picture ->
.vqz bytes) and decode (bytes -> picture), and of CompressAI's
ScaleHyperprior(128, 192) compress()/decompress() on the same image in the
same run (random weights: only its time matters). Reports the median over
images of our time / its time.

tiles: a 2000x2000 mosaic of Kodak images coded whole (one tile) and in
1024-pixel tiles, PSNR of both; then peak memory (the peak resident set
of a fresh process, VmHWM) of encoding and decoding an 8000x8000 mosaic.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch

from bitstream import parse, serialize
from codec.errors import InvalidRequestError
from codec.media import Picture, psnr, read_image
from codec.registry import codec_for, get_codec
from tools.options import KODAK


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def check_kodak(kodak: Path) -> None:
    """Refuse a benchmark folder without the PNGs it reads, before any work."""
    if not kodak.is_dir() or not any(kodak.glob("*.png")):
        raise InvalidRequestError(f"{kodak}: no .png images there (--kodak names the Kodak folder)")


def speed(kodak: Path, images: int, repeats: int, quality: float) -> dict:
    from compressai.models import ScaleHyperprior

    torch.manual_seed(0)
    reference = ScaleHyperprior(128, 192).eval()
    reference.update(force=True)
    ours = get_codec("hyperprior-gmm")
    rows = []
    for path in sorted(kodak.glob("*.png"))[:images]:
        picture = read_image(path)
        x = torch.from_numpy(picture.pixels.copy()).permute(2, 0, 1)[None].float() / 255
        data = serialize(ours.encode([picture], quality=quality)[0])
        our_enc = _median_time(lambda: serialize(ours.encode([picture], quality=quality)[0]), repeats)
        our_dec = _median_time(lambda: codec_for(parse(data)).decode([parse(data)]), repeats)
        with torch.no_grad():
            out = reference.compress(x)
            ref_enc = _median_time(lambda: reference.compress(x), repeats)
            ref_dec = _median_time(lambda: reference.decompress(out["strings"], out["shape"]), repeats)
        rows.append(
            {
                "image": path.name,
                "ours_encode_s": our_enc,
                "ours_decode_s": our_dec,
                "compressai_encode_s": ref_enc,
                "compressai_decode_s": ref_dec,
                "encode_ratio": our_enc / ref_enc,
                "decode_ratio": our_dec / ref_dec,
            }
        )
    return {
        "images": len(rows),
        "repeats": repeats,
        "quality": quality,
        "threads": torch.get_num_threads(),
        "encode_ratio_median": statistics.median(r["encode_ratio"] for r in rows),
        "decode_ratio_median": statistics.median(r["decode_ratio"] for r in rows),
        "ours_encode_s_median": statistics.median(r["ours_encode_s"] for r in rows),
        "ours_decode_s_median": statistics.median(r["ours_decode_s"] for r in rows),
        "compressai_encode_s_median": statistics.median(r["compressai_encode_s"] for r in rows),
        "compressai_decode_s_median": statistics.median(r["compressai_decode_s"] for r in rows),
        "per_image": rows,
    }


def mosaic(kodak: Path, size: int) -> np.ndarray:
    """A size x size picture tiled from the Kodak images (row-major, wrapping)."""
    tiles = [read_image(p).pixels for p in sorted(kodak.glob("*.png"))]
    tiles = [t if t.shape[1] >= 768 else t.transpose(1, 0, 2) for t in tiles]  # portrait ones lie down
    out = np.empty((size, size, 3), np.uint8)
    k = 0
    for top in range(0, size, 512):
        for left in range(0, size, 768):
            t = tiles[k % len(tiles)][:512, :768]
            k += 1
            h, w = min(512, size - top), min(768, size - left)
            out[top : top + h, left : left + w] = t[:h, :w]
    return out


def seams(kodak: Path, quality: float, size: int = 2000, tile: int = 1024) -> dict:
    """PSNR and rate of a size x size mosaic coded whole (one tile) and in tiles of `tile` pixels."""
    from codec import tile_params, tiled

    picture = Picture.from_array(mosaic(kodak, size))
    codec = get_codec("hyperprior-gmm")
    out = {}
    default, largest = tiled.DEFAULT_TILE, tiled.MAX_TILE
    whole = -(-size // tile_params.ALIGN) * tile_params.ALIGN
    try:
        for label, side in (("whole", whole), (f"tiled_{tile}", tile)):
            tiled.DEFAULT_TILE = tiled.MAX_TILE = side  # files only this process reads: decoders refuse > 1024
            data = serialize(codec.encode([picture], quality=quality)[0])
            decoded = codec.decode([parse(data)])[0]
            out[label] = {
                "bpp": 8 * len(data) / picture.info.pixels,
                "psnr": psnr(picture.pixels, decoded.pixels),
                "chunks": len(parse(data).data_chunks()),
            }
    finally:
        tiled.DEFAULT_TILE, tiled.MAX_TILE = default, largest
    out["psnr_cost_db"] = out["whole"]["psnr"] - out[f"tiled_{tile}"]["psnr"]
    return out


def peak_rss_kib() -> int:
    """This process's peak resident memory so far, KiB.

    Linux's VmHWM belongs to the process's own address space. getrusage's
    ru_maxrss does not: it survives exec, so a child started by a large
    parent (this benchmark, after the 2000x2000 seams test) reports the
    parent's peak as its own; earlier sessions measured that way
    (2.2 GiB "before encoding" was the parent's). It is the fallback
    where there is no /proc.
    """
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_child(kodak: Path, size: int, quality: float) -> None:
    """Runs in a fresh process: encode then decode, print seconds and peak RSS after each."""
    picture = Picture.from_array(mosaic(kodak, size))
    codec = get_codec("hyperprior-gmm")
    base = peak_rss_kib()
    t = time.perf_counter()
    data = serialize(codec.encode([picture], quality=quality)[0])
    enc_s = time.perf_counter() - t
    after_encode = peak_rss_kib()
    del picture
    t = time.perf_counter()
    decoded = codec.decode([parse(data)])[0]
    dec_s = time.perf_counter() - t
    peak = peak_rss_kib()
    print(
        json.dumps(
            {
                "size": size,
                "bytes": len(data),
                "encode_s": enc_s,
                "decode_s": dec_s,
                "rss_before_kib": base,
                "peak_rss_after_encode_kib": after_encode,
                "peak_rss_kib": peak,
                "decoded_shape": list(decoded.pixels.shape),
            }
        )
    )


def peak_memory(kodak: Path, size: int, quality: float) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "tools.bench_image", "_peak", str(size), str(quality), str(kodak)],
        capture_output=True,
        text=True,
        check=True,
    )
    r = json.loads(done.stdout.strip().splitlines()[-1])
    r["peak_rss_gib"] = r["peak_rss_kib"] / 2**20
    return r


@click.group()
def main() -> None:
    """Image codec benchmarks."""


@main.command(name="speed")
@click.option("--kodak", type=click.Path(path_type=Path), default=KODAK, show_default=True)
@click.option("--images", default=24, show_default=True)
@click.option("--repeats", default=5, show_default=True)
@click.option("--quality", type=float, default=None, help="Default: the model's default quality.")
@click.option("--json", "as_json", is_flag=True)
def speed_command(kodak, images, repeats, quality, as_json) -> None:
    r = speed(kodak, images, repeats, get_codec("hyperprior-gmm").default_quality if quality is None else quality)
    if as_json:
        click.echo(json.dumps(r, indent=2))
    else:
        click.echo(
            f"{r['images']} images, median of {repeats}, {r['threads']} threads: "
            f"encode {r['ours_encode_s_median']:.3f}s vs CompressAI {r['compressai_encode_s_median']:.3f}s "
            f"(ratio {r['encode_ratio_median']:.2f}); decode {r['ours_decode_s_median']:.3f}s vs "
            f"{r['compressai_decode_s_median']:.3f}s (ratio {r['decode_ratio_median']:.2f})"
        )


@main.command(name="tiles")
@click.option("--kodak", type=click.Path(path_type=Path), default=KODAK, show_default=True)
@click.option("--quality", type=float, default=None, help="Default: the model's default quality.")
@click.option("--size", default=8000, show_default=True, help="Side of the memory test image.")
@click.option("--json", "as_json", is_flag=True)
def tiles_command(kodak, quality, size, as_json) -> None:
    quality = get_codec("hyperprior-gmm").default_quality if quality is None else quality
    r = {"quality": quality, "seams_2000": seams(kodak, quality), "memory": peak_memory(kodak, size, quality)}
    click.echo(json.dumps(r, indent=2))


@main.command(name="_peak", hidden=True)
@click.argument("size", type=int)
@click.argument("quality", type=float)
@click.argument("kodak", type=click.Path(path_type=Path))
def _peak_command(size, quality, kodak) -> None:
    _peak_child(kodak, size, quality)


if __name__ == "__main__":
    main()
