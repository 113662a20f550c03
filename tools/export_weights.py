"""Turn a training checkpoint into shipped weights and a manifest entry.

    python -m tools.export_weights runs/gmm/checkpoint.pt [--name hyperprior-gmm]

Writes weights/<name>.pt (config, float32 state dict, and the integer tables
of the hyper-latent prior, computed here once in float64 so that coders
never rebuild them) and updates weights/manifest.json with its sha256,
parameter count, data and steps. Figures are added by the evaluation.
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


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True, path_type=Path))
@click.option("--name", default="hyperprior-gmm", show_default=True)
def main(checkpoint: Path, name: str) -> None:
    """Export CHECKPOINT as the shipped weights of NAME."""
    out = export(checkpoint, name)
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
