"""Training on a lent accelerator: the pack that travels there and the run that uses it.

Sessions are sometimes lent a GPU machine for 15 minutes (../shared/DESIGN.md,
"The accelerator"). It gets a copy of the working tree (at most 64 MiB with
what is carried, and the tracked tree alone is about 40 MiB), cannot reach
../shared or the internet, and lacks compressai, constriction, soundfile and
pytorch-msssim. So the run is prepared here, rehearsed here on the CPU, and
made in one call:

    python -m tools.device_kit pack                  # here: .device/ (git-ignored)
    python -m tools.device_kit train --device cpu --minutes 1 --mirror /tmp/out   # rehearsal, here
    device run: bash tools/device_train.sh 8.5      carry [".device"], timeout_s 600
    back here:  mkdir -p runs/device && cp <files_at>/* runs/device/
                python -m tools.train_image runs/device   # commit, then export and evaluate as usual

The pack holds the training photos as WebP at quality 85 (the originals
would not fit; a JPEG stays as it is where that is smaller, as SUN's are;
the hold-out photos are lossless, so the learning curve stays comparable
with the CPU's) and the wheels for the device's Python 3.12.
"""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import click
import torch
from PIL import Image

from codec.fileio import atomic_write
from tools.options import data_root_option
from tools.train_image import HOLDOUT_DIR, TRAIN_DIRS, TrainOptions, image_files, seed_from_committed, train

ROOT = Path(__file__).resolve().parents[1]
PACK = ROOT / ".device"
TRAVEL_LIMIT = 64 << 20  # bytes of working tree the device tool sends
HOLDOUT_COUNT = 4  # what tools.train_image.load_holdout reads
WHEELS = ("compressai", "constriction", "soundfile", "pytorch-msssim")
PLATFORMS = ("manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
WEBP_QUALITY = 85  # BSDS500's PNGs: 13.7 MiB at quality 90 did not fit beside the 38 MiB tracked tree
PROBE_STEPS = 100  # timed before the run sets its schedule to the minutes left


def _packed(path: Path, lossless: bool) -> tuple[str, bytes]:
    """(file name, bytes) of one photo in the pack: as WebP, or a JPEG as it is where that is smaller."""
    with Image.open(path) as im:
        out = io.BytesIO()
        im.convert("RGB").save(out, format="WEBP", lossless=lossless, quality=WEBP_QUALITY, method=4)
    original = path.read_bytes()
    if path.suffix.lower() in (".jpg", ".jpeg") and not lossless and len(original) <= out.tell():
        return path.name, original
    return path.stem + ".webp", out.getvalue()


def pack_photos(data_root: Path, pack: Path) -> int:
    """The training photos and the hold-out photos (lossless) under pack/data; returns their bytes."""
    total = 0
    for sub, files, lossless in [(d, image_files(data_root / d), False) for d in TRAIN_DIRS] + [
        (HOLDOUT_DIR, image_files(data_root / HOLDOUT_DIR)[:HOLDOUT_COUNT], True)
    ]:
        (pack / "data" / sub).mkdir(parents=True, exist_ok=True)
        for path in files:
            name, data = _packed(path, lossless)
            atomic_write(pack / "data" / sub / name, data, force=True)
            total += len(data)
    return total


def pack_wheels(pack: Path) -> None:
    """Wheels for the device's CPython 3.12 of the packages it lacks, at the versions installed here."""
    pins = [f"{name}=={metadata.version(name)}" for name in WHEELS]
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        + ["--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(pack / "whl"), *pins],
        check=True,
    )


def _tracked_bytes() -> int:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return sum((ROOT / n).stat().st_size for n in names.decode().split("\0") if n and (ROOT / n).is_file())


def _ignore_pack() -> None:
    exclude = ROOT / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    if not exclude.exists() or "/.device/" not in exclude.read_text().split():
        with open(exclude, "a") as f:
            f.write("/.device/\n")


@click.group()
def cli() -> None:
    """Prepare and run training on a lent accelerator."""


@cli.command()
@data_root_option("Folder with bsds500/ and sun_hays80/ (never Kodak).")
def pack(data_root: Path) -> None:
    """Write .device/: the photos and wheels the device run needs (git-ignored)."""
    _ignore_pack()
    photos = pack_photos(data_root, PACK)
    pack_wheels(PACK)
    wheels = sum(p.stat().st_size for p in (PACK / "whl").glob("*.whl"))
    tracked = _tracked_bytes()
    total = photos + wheels + tracked
    click.echo(
        f"photos {photos / 2**20:.1f} MiB, wheels {wheels / 2**20:.1f} MiB, tracked tree {tracked / 2**20:.1f} MiB"
    )
    if total > TRAVEL_LIMIT:
        raise click.ClickException(f"{total / 2**20:.1f} MiB would travel, over the device's 64 MiB")
    click.echo(f'{total / 2**20:.1f} MiB travel. Device call: bash tools/device_train.sh MINUTES, carry [".device"]')


@cli.command(name="train")
@click.option(
    "--minutes",
    default=8.5,
    show_default=True,
    help="Wall-clock budget of the training (the wheels install before it).",
)
@click.option("--device", default="cuda", show_default=True)
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("/tmp/vqz-run"), show_default=True)
@click.option("--mirror", type=click.Path(path_type=Path), required=True, help="Where checkpoints go back ($OUT).")
@click.option("--batch", default=16, show_default=True)
@click.option("--crop", default=256, show_default=True)
@click.option("--lr", default=2e-4, show_default=True)
def train_command(minutes: float, device: str, out_dir: Path, mirror: Path, batch: int, crop: int, lr: float) -> None:
    """Continue the committed hyperprior-gmm checkpoint for about MINUTES on DEVICE, from the pack.

    A short probe run measures the step rate; the main run then restarts
    the warm-up and cosine schedule so that it decays within the minutes
    left, and every checkpoint (each minute) is mirrored without Adam's
    state, so that a run cut short still brings its last minute back.
    """
    began = time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_from_committed(out_dir, "hyperprior-gmm", log=click.echo)
    opts = TrainOptions(
        data_root=PACK / "data",
        out_dir=out_dir,
        batch=batch,
        crop=crop,
        lr=lr,
        device=device,
        checkpoint_minutes=1.0,
        new_schedule=True,
        mirror=mirror,
    )
    first = _checkpoint_step(out_dir)
    stamps: list[float] = []
    train(
        dataclasses.replace(opts, steps=first + PROBE_STEPS),
        log=click.echo,
        progress=lambda step, summary: stamps.append(time.time()),
    )
    warm = PROBE_STEPS // 5  # the first steps pay for CUDA's start-up and the held-out evaluation
    per_step = (stamps[-1] - stamps[warm]) / (len(stamps) - 1 - warm)
    left = minutes * 60 - (time.time() - began) - 45  # loading the photos again, the last save
    steps = max(1, int(left / per_step))
    click.echo(f"{per_step * 1000:.0f} ms a step: {steps} more steps in {left / 60:.1f} min")
    train(dataclasses.replace(opts, steps=first + PROBE_STEPS + steps, max_minutes=left / 60), log=click.echo)


def _checkpoint_step(out_dir: Path) -> int:
    path = out_dir / "checkpoint.pt"
    return int(torch.load(path, map_location="cpu", weights_only=False)["step"]) if path.exists() else 0


if __name__ == "__main__":
    cli()
