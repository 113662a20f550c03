"""Benchmark of the VQ codec on Kodak: codebook use, entropy-coding saving, decode time.

    python -m tools.bench_vq [--kodak DIR] [--repeats 5] [--json]   (or `vqz bench vq`)

- utilisation: per level and codebook, the fraction of the full codebook's
  entries used at least once over all Kodak images (target >= 90%), and
  the perplexity (exp of the index entropy);
- saving: per rate point, the whole files' size (headers included) against
  the fixed-length bound (indices x log2 entries), summed over the images;
- decode time: per image, median of `repeats` decodes at the top rate point,
  as a ratio to hyperprior-gmm's decode of the same image at its lowest
  quality (the nearest rate it has), in the same run; the median ratio.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import click
import numpy as np
import torch

from bitstream import parse, serialize
from codec.errors import InvalidRequestError
from codec.media import read_image
from codec.models.vq import MultiCodebookQuantiser
from codec.registry import get_codec
from codec.tiled import DEFAULT_TILE, tile_grid
from tools.bench_image import _median_time
from tools.options import KODAK


def utilisation(codec, pictures) -> list[dict]:
    """Per level and codebook: entries used at least once (fraction) and perplexity, full codebooks."""
    model = codec.model
    indices: dict[int, list[torch.Tensor]] = {lv: [] for lv in range(model.config.levels)}
    for picture in pictures:
        x = torch.from_numpy(codec.rgb(picture).copy()).permute(2, 0, 1)[None].float() / 255
        h, w = x.shape[2] // 64 * 64, x.shape[3] // 64 * 64  # Kodak: 768x512, already aligned
        for level, idx in enumerate(reversed(model.encode_indices(x[:, :, :h, :w]))):
            indices[level].append(idx)
    rows = []
    for level, found in indices.items():
        flat = torch.cat([i.permute(1, 0, 2, 3).reshape(i.shape[1], -1) for i in found], dim=1)
        used, perplexity = MultiCodebookQuantiser.utilisation(flat.T[:, :, None, None], model.config.entries)
        for m in range(used.numel()):
            rows.append(
                {
                    "level": f"1/{16 << level}",
                    "codebook": m,
                    "used_fraction": float(used[m]),
                    "perplexity": float(perplexity[m]),
                }
            )
    return rows


def savings(codec, pictures) -> list[dict]:
    """Per rate point: whole-file bits against the fixed-length bound, over all pictures."""
    rows = []
    for quality, (keep, entries) in enumerate(codec.ladder, start=1):
        sizes = codec.codebook_sizes(keep, entries)
        coded = fixed = pixels = 0
        for picture in pictures:
            coded += 8 * len(serialize(codec.encode([picture], quality=quality)[0]))
            pixels += picture.info.pixels
            for t in tile_grid(picture.info.height, picture.info.width, DEFAULT_TILE):
                ph, pw = t.padded
                for level, size in sizes.items():
                    positions = (ph >> (4 + level)) * (pw >> (4 + level)) * codec.config.codebooks
                    fixed += positions * float(np.log2(size))
        rows.append(
            {
                "quality": quality,
                "levels_kept": keep,
                "finest_entries": entries,
                "bpp": coded / pixels,
                "fixed_length_bpp": fixed / pixels,
                "saving_pct": 100.0 * (1.0 - coded / fixed),
            }
        )
    return rows


def decode_speed(codec, pictures, repeats: int) -> dict:
    gmm = get_codec("hyperprior-gmm")
    ratios, ours, theirs = [], [], []
    for picture in pictures:
        vq_data = parse(serialize(codec.encode([picture], quality=codec.levels)[0]))
        gmm_data = parse(serialize(gmm.encode([picture], quality=1)[0]))
        a = _median_time(lambda: codec.decode([vq_data]), repeats)  # noqa: B023 (runs before the loop moves on)
        b = _median_time(lambda: gmm.decode([gmm_data]), repeats)  # noqa: B023
        ours.append(a)
        theirs.append(b)
        ratios.append(a / b)
    return {
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "vq_decode_s_median": statistics.median(ours),
        "gmm_quality1_decode_s_median": statistics.median(theirs),
        "decode_ratio_median": statistics.median(ratios),
    }


def run(kodak: Path, repeats: int, name: str = "vq-mcq") -> dict:
    paths = sorted(kodak.glob("*.png"))
    if not paths:
        raise InvalidRequestError(f"{kodak}: no .png images there")
    codec = get_codec(name)
    pictures = [read_image(p) for p in paths]
    use = utilisation(codec, pictures)
    return {
        "model": name,
        "images": len(pictures),
        "utilisation": use,
        "min_used_fraction": min(r["used_fraction"] for r in use),
        "rate_points": savings(codec, pictures),
        "decode": decode_speed(codec, pictures, repeats),
    }


@click.command()
@click.option("--kodak", type=click.Path(path_type=Path), default=KODAK, show_default=True)
@click.option("--repeats", default=5, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def main(kodak: Path, repeats: int, as_json: bool) -> None:
    """Codebook utilisation, entropy-coding saving and decode time of vq-mcq on Kodak."""
    r = run(kodak, repeats)
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    for u in r["utilisation"]:
        click.echo(
            f"level {u['level']:>5} codebook {u['codebook']}: {100 * u['used_fraction']:.1f}% used, "
            f"perplexity {u['perplexity']:.1f}"
        )
    for p in r["rate_points"]:
        click.echo(
            f"quality {p['quality']}: {p['bpp']:.4f} bpp, fixed-length {p['fixed_length_bpp']:.4f} bpp, "
            f"saving {p['saving_pct']:.1f}%"
        )
    d = r["decode"]
    click.echo(
        f"decode {d['vq_decode_s_median']:.3f}s vs hyperprior-gmm q1 {d['gmm_quality1_decode_s_median']:.3f}s, "
        f"median ratio {d['decode_ratio_median']:.2f}"
    )


if __name__ == "__main__":
    main()
