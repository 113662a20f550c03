"""Training on a lent accelerator: the pack that travels there and the run that uses it.

Sessions are sometimes lent a GPU machine for 15 minutes (../shared/DESIGN.md,
"The accelerator"). It gets a copy of the working tree (at most 64 MiB with
what is carried, and the tracked tree alone is about 40 MiB), cannot reach
../shared or the internet, and lacks compressai, constriction, soundfile and
pytorch-msssim. So the run is prepared here, rehearsed here on the CPU, and
made in one call:

    python -m tools.device_kit pack                  # here: .device/ (git-ignored)
    python -m tools.device_kit train --device cpu --minutes 1 --mirror /tmp/out   # rehearsal, here
    device run: bash tools/device_train.sh 8.2      carry [".device"], timeout_s 600
    back here:  mkdir -p runs/device && cp <files_at>/checkpoint.pt <files_at>/curve.csv runs/device/
                python -m tools.train_image runs/device   # commit, then export and evaluate as usual
                python -m tools.device_kit verify <files_at>/check   # GPU-encoded files decode here alike

`check` (run by `bash tools/device_train.sh` after training, at most 90 s; about 30 s expected)
encodes hold-out photos on the GPU and the CPU and decodes them crosswise;
`verify` decodes the same files on this machine and compares pixels and bytes.

The pack holds the training photos as WebP at quality 85 (the originals
would not fit; a JPEG stays as it is where that is smaller, as SUN's are;
the hold-out photos are lossless, so the learning curve stays comparable
with the CPU's) and the wheels for the device's Python 3.12.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import subprocess
import sys
import time
import zipfile
from importlib import metadata
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image

import codec
from codec.fileio import atomic_write
from codec.media import psnr
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
    """Prepare and run training, and a check of GPU coding, on a lent accelerator."""


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
    default=8.2,
    show_default=True,
    help="Wall-clock budget of the training (the wheels install before it).",
)
@click.option("--device", default="cuda", show_default=True)
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("/tmp/vqz-run"), show_default=True)
@click.option("--mirror", type=click.Path(path_type=Path), required=True, help="Where checkpoints go back ($OUT).")
@click.option("--batch", default=32, show_default=True, help="On an H100: 54 ms a step at 32 (session 7).")
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


CHECK_CASES = (("hyperprior-gmm", 1.0), ("hyperprior-gmm", 6.0), ("hyperprior-gmm", 11.0), ("vq-mcq", None))


def check_photos(pack: Path) -> list[np.ndarray]:
    """Two hold-out photos from the pack and a crop of the first (284x400 of a BSDS photo: not a multiple of 64)."""
    photos = []
    for path in image_files(pack / "data" / HOLDOUT_DIR)[:2]:
        with Image.open(path) as im:
            photos.append(np.asarray(im.convert("RGB")))
    return photos + [photos[0][37:337, 11:411].copy()]


def _pixels_digest(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()[:16]


def _file_name(model: str, quality: float | None, device: str, index: int) -> str:
    return f"{model}-q{quality}-{device}-{index}.vqz"


@cli.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Where report.json and files.zip go ($OUT).",
)
@click.option("--device", default="cuda", show_default=True)
@click.option(
    "--pack", "pack_dir", type=click.Path(file_okay=False, path_type=Path), default=PACK, show_default=True, hidden=True
)
def check(out_dir: Path, device: str, pack_dir: Path) -> None:
    """Encode and decode the pack's check photos on DEVICE and on the CPU, crosswise.

    DESIGN promises that a file encoded on a GPU decodes anywhere, and that
    the CPU writes the same bytes on any machine; this is the run that looks.
    report.json holds, per model and quality and encoding device: sizes,
    whether the bytes equal the CPU's, and for each decoding device the PSNR
    and a digest of the pixels; files.zip holds every file, so that `verify`
    can decode them on this machine too. Timings are one batched call after
    a warm-up (entropy coding is on the CPU either way).
    """
    photos = check_photos(pack_dir)
    devices = ["cpu"] + ([device] if device != "cpu" else [])
    cases, files = [], {}
    for model, quality in CHECK_CASES:
        encoded = {}
        for enc in devices:
            codec.encode(photos[:1], model=model, quality=quality, device=enc)  # warm-up
            began = time.perf_counter()
            encoded[enc] = codec.encode(photos, model=model, quality=quality, device=enc)
            case = {"model": model, "quality": quality, "encode_device": enc, "encode_s": time.perf_counter() - began}
            case["bytes"] = [len(f) for f in encoded[enc]]
            case["same_bytes_as_cpu"] = [a == b for a, b in zip(encoded[enc], encoded["cpu"])]
            for dec in devices:
                began = time.perf_counter()
                decoded = codec.decode(encoded[enc], device=dec)
                case[f"decode_{dec}_s"] = time.perf_counter() - began
                case[f"psnr_{dec}"] = [psnr(a, b) for a, b in zip(photos, decoded)]
                case[f"pixels_{dec}"] = [_pixels_digest(p) for p in decoded]
            files.update({_file_name(model, quality, enc, i): f for i, f in enumerate(encoded[enc])})
            cases.append(case)
            click.echo(json.dumps(case))
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"torch": torch.__version__, "devices": devices, "cases": cases}
    atomic_write(out_dir / "report.json", json.dumps(report, indent=1).encode(), force=True)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    atomic_write(out_dir / "files.zip", archive.getvalue(), force=True)


@cli.command()
@click.argument("result", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--pack", "pack_dir", type=click.Path(file_okay=False, path_type=Path), default=PACK, show_default=True, hidden=True
)
def verify(result: Path, pack_dir: Path) -> None:
    """Here, on the CPU: re-encode and decode what `check` wrote to RESULT, and compare.

    Every file the device encoded (on its CPU or its GPU) must decode here
    to the very pixels its CPU decoded, and this CPU must write the bytes
    the device's CPU wrote. Exits 1 if anything differs.
    """
    report = json.loads((result / "report.json").read_text())
    photos = check_photos(pack_dir)
    if any(len(case["bytes"]) != len(photos) for case in report["cases"]):
        raise click.ClickException(f"{result} was made from other photos than {pack_dir}'s ({len(photos)})")
    bad = 0
    with zipfile.ZipFile(result / "files.zip") as z:
        for case in report["cases"]:
            model, quality, enc = case["model"], case["quality"], case["encode_device"]
            theirs = [z.read(_file_name(model, quality, enc, i)) for i in range(len(case["bytes"]))]
            decoded = codec.decode(theirs)
            same_pixels = [_pixels_digest(p) == d for p, d in zip(decoded, case["pixels_cpu"])]
            line = f"{model} q{quality} encoded on {enc}: decodes here to the device CPU's pixels {same_pixels}"
            if enc == "cpu":
                ours = codec.encode(photos, model=model, quality=quality)
                same_bytes = [a == b for a, b in zip(ours, theirs)]
                line += f", same bytes as this CPU's {same_bytes}"
                bad += same_bytes.count(False)
            bad += same_pixels.count(False)
            click.echo(line)
    click.echo("all equal" if not bad else f"{bad} differ")
    sys.exit(1 if bad else 0)


def _checkpoint_step(out_dir: Path) -> int:
    path = out_dir / "checkpoint.pt"
    return int(torch.load(path, map_location="cpu", weights_only=False)["step"]) if path.exists() else 0


if __name__ == "__main__":
    cli()
