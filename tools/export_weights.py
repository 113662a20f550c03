"""Turn a training checkpoint into shipped weights and a manifest entry.

    python -m tools.export_weights runs/gmm/checkpoint.pt [--name hyperprior-gmm]

Writes weights/<name>.pt (config, float32 state dict, and the integer tables
of the hyper-latent prior, computed here once in float64 so that coders
never rebuild them) and updates weights/manifest.json with its sha256,
parameter count, data and steps.

    python -m tools.export_weights --figures docs/results/kodak [--name hyperprior-gmm]

copies the Kodak figures of a finished `vqz eval` (its <codec>.json and
webp.json) into the model's manifest entry, so the manifest never carries a
hand-typed number.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import click
import torch

from codec.fileio import atomic_write
from codec.image_codec import z_frequencies
from codec.models.hyperprior import HyperpriorConfig, HyperpriorGMM
from tools.bdrate import compare, load_results

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
Z_RADIUS = 48
TRAINING_DATA = "BSDS500 train+val (300), SUN-Hays80 (80, also at half size); never Kodak"


def update_manifest(name: str, fields: dict) -> None:
    path = WEIGHTS_DIR / "manifest.json"
    doc = json.loads(path.read_text()) if path.exists() else {"models": []}
    entries = {e["name"]: e for e in doc["models"]}
    entries.setdefault(name, {"name": name}).update(fields)
    doc["models"] = sorted(entries.values(), key=lambda e: e["name"])
    atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode(), force=True)


def export(checkpoint: Path, name: str = "hyperprior-gmm") -> Path:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    config = dict(state["config"])
    config["lambdas"] = tuple(config["lambdas"])
    model = HyperpriorGMM(HyperpriorConfig(**config))
    model.load_state_dict(state["model"])
    shipped = {
        "config": state["config"],
        "model": {k: v.float().contiguous() for k, v in model.state_dict().items()},
        "z_frequencies": torch.from_numpy(z_frequencies(model.entropy_bottleneck, Z_RADIUS)),
    }
    buf = io.BytesIO()
    torch.save(shipped, buf)
    data = buf.getvalue()
    out = WEIGHTS_DIR / f"{name}.pt"
    atomic_write(out, data, force=True)
    update_manifest(
        name,
        {
            "file": out.name,
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "parameters": model.parameter_count(),
            "architecture": config | {"lambdas": list(config["lambdas"])},
            "training_data": TRAINING_DATA,
            "steps": int(state["step"]),
            "training_minutes": round(float(state["minutes"]), 1),
        },
    )
    return out


EVAL_COMMAND = (
    "vqz eval images ../shared/data/kodak --codecs vqz:{name},jpeg,webp,avif,jxl,jpeg2000 --out {out} "
    "--anchor docs/results/anchors/compressai-bmshj2018-hyperprior.json -j 2"
)


def record_figures(results_dir: Path, name: str = "hyperprior-gmm", reference: str = "webp") -> dict:
    """Copy a finished Kodak evaluation of `name` into its manifest entry; returns what was written."""
    ours = load_results(results_dir / f"vqz-{name}.json")
    manifest = json.loads(WEIGHTS_DIR.joinpath("manifest.json").read_text())
    entry = {e["name"]: e for e in manifest["models"]}[name]
    if ours.get("fingerprint") != f"weights {entry['sha256'][:16]}":
        raise click.ClickException(f"{results_dir} evaluated other weights ({ours.get('fingerprint')}), not {name}'s")
    ref = load_results(results_dir / f"{reference}.json")
    r = ours["results"]
    psnr, msssim = compare(ref, ours, "psnr-rgb"), compare(ref, ours, "ms-ssim-db")
    figures = {
        "command": EVAL_COMMAND.format(name=name, out=results_dir),
        "quality": r["quality"],
        "bpp": [round(v, 4) for v in r["bpp"]],
        "psnr_rgb": [round(v, 3) for v in r["psnr-rgb"]],
        "ms_ssim": [round(v, 5) for v in r["ms-ssim"]],
        f"bd_rate_vs_{reference}_pct": round(psnr["bd_rate_pct"], 1),
        f"bd_psnr_vs_{reference}_db": round(psnr["bd_quality"], 2),
        f"bd_rate_vs_{reference}_msssim_pct": round(msssim["bd_rate_pct"], 1),
    }
    update_manifest(name, {"kodak": figures})
    return figures


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True, path_type=Path), required=False)
@click.option("--name", default="hyperprior-gmm", show_default=True)
@click.option(
    "--figures",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Instead of exporting: record this Kodak evaluation folder's figures in the manifest.",
)
def main(checkpoint: Path | None, name: str, figures: Path | None) -> None:
    """Export CHECKPOINT as the shipped weights of NAME (or record its --figures)."""
    if figures:
        click.echo(json.dumps(record_figures(figures, name)))
    elif checkpoint:
        click.echo(f"wrote {export(checkpoint, name)}")
    else:
        raise click.UsageError("give a CHECKPOINT to export, or --figures DIR")


if __name__ == "__main__":
    main()
