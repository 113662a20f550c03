"""Turn a training checkpoint into shipped weights and a manifest entry.

    python -m tools.export_weights runs/gmm/checkpoint.pt [--name hyperprior-gmm]

Writes weights/<name>.pt (config, float32 state dict, the integer tables
of the hyper-latent, one set per rate level, counted here once on training
crops and smoothed towards the factorized prior, so that coders never
rebuild them, and the integer hyper-synthesis head, calibrated on training
crops) and updates weights/manifest.json with its sha256,
parameter count, data and steps.

    python -m tools.export_weights --figures docs/results/kodak [--name hyperprior-gmm]

copies the Kodak figures of a finished `vqz eval` (its <codec>.json and
webp.json) into the model's manifest entry, so the manifest never carries a
hand-typed number.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path

import click
import numpy as np
import torch

from codec.fileio import atomic_write
from codec.image_codec import hyper_head, z_level_frequencies
from codec.models.hyperprior import HyperpriorConfig, HyperpriorGMM
from codec.models.vq_image import RATE_LADDER, VQImageConfig, VQImageModel
from codec.vq_codec import codebook_key
from tools.bdrate import CurvesDoNotOverlapError, InvalidResultsError, compare, load_results
from tools.options import data_root_option

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
Z_RADIUS = 48
CALIBRATION_CROPS = 64  # training crops that set the integer hyper head's activation ranges (x every level)
Z_COUNT_CROPS = 2000  # training crops whose hyper-latents, counted at every level, make the hyper-latent tables
TRAINING_DATA = "BSDS500 train+val (300), SUN-Hays80 (80, also at half size); never Kodak"


def update_manifest(name: str, fields: dict, replace: bool = False) -> None:
    """Add `fields` to the manifest entry of `name`; `replace` starts the entry afresh.

    New weights replace their entry, so that no figure or note measured on
    the previous weights survives next to the new sha256.
    """
    path = WEIGHTS_DIR / "manifest.json"
    doc = json.loads(path.read_text()) if path.exists() else {"models": []}
    entries = {e["name"]: e for e in doc["models"]}
    if replace:
        entries.pop(name, None)
    entries.setdefault(name, {"name": name}).update(fields)
    doc["models"] = sorted(entries.values(), key=lambda e: e["name"])
    atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode(), force=True)


def _ship(name: str, shipped: dict, model: torch.nn.Module, state: dict, fields: dict) -> Path:
    """Write weights/<name>.pt atomically and its manifest entry (sha256, size, data, steps + `fields`)."""
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
            "parameters": sum(p.numel() for p in model.parameters()),
            "training_data": TRAINING_DATA,
            "steps": int(state["step"]),
            "training_minutes": round(float(state["minutes"]), 1),
        }
        | fields,
        replace=True,
    )
    return out


def training_crops(data_root: Path, count: int, seed: int = 0) -> torch.Tensor:
    """`count` random 256x256 crops of the training photos (never Kodak), the same for the same data and seed."""
    from tools.train_image import load_training_images, random_batch

    return random_batch(load_training_images(data_root, 256), count, 256, np.random.default_rng(seed))


def export(checkpoint: Path, data_root: Path, name: str = "hyperprior-gmm") -> Path:
    """Shipped weights: the float32 model, the hyper-latent's integer tables, and the integer hyper head."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    config = dict(state["config"])
    config["lambdas"] = tuple(config["lambdas"])
    model = HyperpriorGMM(HyperpriorConfig(**config)).eval()
    model.load_state_dict(state["model"])
    z_tables = z_level_frequencies(model, training_crops(data_root, Z_COUNT_CROPS, seed=1), Z_RADIUS)
    shipped = {
        "config": state["config"],
        "model": {k: v.float().contiguous() for k, v in model.state_dict().items()},
        "z_frequencies": torch.from_numpy(z_tables),
        "hyper_head": hyper_head(model, training_crops(data_root, CALIBRATION_CROPS)),
    }
    architecture = config | {"lambdas": list(config["lambdas"])}
    return _ship(name, shipped, model, state, {"architecture": architecture})


EVAL_COMMAND = (  # the one evaluation whose figures the manifest records (README.md, "Figures")
    "vqz eval images ../shared/data/kodak --codecs vqz:hyperprior-gmm,vqz:vq-mcq,jpeg,webp,avif,jxl,jpeg2000 "
    "--out {out} --anchor docs/results/anchors/compressai-bmshj2018-hyperprior.json -j 2"
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
    bd = {}
    for metric in ("psnr-rgb", "ms-ssim-db"):
        try:
            bd[metric] = compare(ref, ours, metric)
        except (CurvesDoNotOverlapError, InvalidResultsError):  # e.g. a low-rate codec below the reference's range
            bd[metric] = {"bd_rate_pct": None, "bd_quality": None}
    psnr, msssim = bd["psnr-rgb"], bd["ms-ssim-db"]

    def rounded(v, digits):
        return None if v is None else round(v, digits)

    figures = {
        "command": EVAL_COMMAND.format(out=results_dir),
        "quality": r["quality"],
        "bpp": [round(v, 4) for v in r["bpp"]],
        "psnr_rgb": [rounded(v, 3) for v in r["psnr-rgb"]],
        "ms_ssim": [rounded(v, 5) for v in r["ms-ssim"]],  # null where undefined (images under 161 pixels)
        f"bd_rate_vs_{reference}_pct": rounded(psnr["bd_rate_pct"], 1),
        f"bd_psnr_vs_{reference}_db": rounded(psnr["bd_quality"], 2),
        f"bd_rate_vs_{reference}_msssim_pct": rounded(msssim["bd_rate_pct"], 1),
    }
    update_manifest(name, {"kodak": figures})
    return figures


VQ_TABLE_TOTAL = 1 << 16
VQ_TABLE_CROPS = 1024
# Index contexts (session 8): groups of the parent index (same codebook, next coarser level) and of
# the previous codebook's index; tables smoothed towards the codebook's context-free one with the
# weight of VQ_CONTEXT_PRIOR indices. Chosen on 768 training crops, tested on 256 others (step
# 10,124): parent groups alone saved 1.1-3.5% of a codebook's bits, previous-codebook groups 2.5-5.4%,
# both (4 x 8) 3.0-6.2% at 1/16 and 1/32; 8 x 8 or 4 x 16 were no better.
VQ_PARENT_GROUPS = 4
VQ_PREVIOUS_GROUPS = 8
VQ_CONTEXT_PRIOR = 32.0


def _vq_indices(model: VQImageModel, crops: torch.Tensor, sizes: dict[int, dict[int, tuple]]) -> dict[str, np.ndarray]:
    """Indices (N, M, h, w) per level and codebook size, over the crops.

    Coarser levels always use their full codebooks (as every ladder point
    does), so a level's residual target is the same for all its sizes.
    """
    found: dict[str, list[np.ndarray]] = {}

    def collect(level, target):
        q = model.quantisers[level]
        for entries, (keys, _) in sizes[level].items():
            found.setdefault(codebook_key(level, entries), []).append(q.nearest(target, keys).numpy())
        return q.lookup(q.nearest(target)), None

    with torch.no_grad():
        for i in range(0, crops.shape[0], 8):
            model.coarse_to_fine(model.features(crops[i : i + 8]), collect, model.config.levels)
    return {key: np.concatenate(parts) for key, parts in found.items()}


def _counts(indices: np.ndarray, entries: int) -> np.ndarray:
    """(M, entries) index counts of (N, M, h, w) indices."""
    return np.stack([np.bincount(indices[:, m].reshape(-1), minlength=entries) for m in range(indices.shape[1])])


def _group(symbols: np.ndarray, given: np.ndarray, entries: int, values: int, groups: int, seed: int) -> np.ndarray:
    """Groups (values,) of the conditioning indices whose tables of the following `symbols` are alike.

    Weighted k-means of the smoothed conditional tables in Hellinger space
    (square roots of probabilities), seeded for a reproducible export.
    """
    groups = min(groups, values)
    counts = np.zeros((values, entries))
    np.add.at(counts, (given, symbols), 1)
    seen = counts.sum(1)
    prior = (counts.sum(0) + 0.5) / (counts.sum() + 0.5 * entries)
    profiles = np.sqrt((counts + 4 * prior) / (seen[:, None] + 4))
    rng = np.random.default_rng(seed)
    weight = seen + 1e-3  # never-seen values can still seed a group
    centres = profiles[rng.choice(values, groups, replace=False, p=weight / weight.sum())]
    for _ in range(30):
        labels = ((profiles[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
        for g in range(groups):
            member = weight * (labels == g)
            if member.sum() > 0:
                centres[g] = (profiles * member[:, None]).sum(0) / member.sum()
    return labels.astype(np.int64)


def _frequencies(counts: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Integer tables (.., entries) summing to about VQ_TABLE_TOTAL, smoothed towards `prior`; none is zero."""
    p = (counts + VQ_CONTEXT_PRIOR * prior) / (counts.sum(-1, keepdims=True) + VQ_CONTEXT_PRIOR)
    return np.maximum(np.floor(p * VQ_TABLE_TOTAL).astype(np.int64), 1)  # unseen entries stay codable


def _vq_context_tables(indices: dict[str, np.ndarray], config: VQImageConfig) -> tuple[dict, dict]:
    """Per level and codebook size: its `IndexContexts` state and its tables (M, contexts, entries)."""
    contexts, frequencies = {}, {}
    for key, idx in indices.items():
        level, entries = (int(v) for v in key.split("/"))
        n, books, h, w = idx.shape
        parent = None
        if level + 1 < config.levels:  # co-located parent, full codebook of the next coarser level
            parent = indices[codebook_key(level + 1, config.entries)].repeat(2, axis=2).repeat(2, axis=3)
        pg = VQ_PARENT_GROUPS if parent is not None else 1
        parent_groups = np.zeros((books, config.entries), np.int64)
        previous_groups = np.zeros((books, entries), np.int64)
        table = np.zeros((books, pg * VQ_PREVIOUS_GROUPS, entries))
        static = _counts(idx, entries)
        for m in range(books):
            symbols = idx[:, m].reshape(-1)
            ids = np.zeros_like(symbols)
            if parent is not None:
                given = parent[:, m].reshape(-1)
                parent_groups[m] = _group(symbols, given, entries, config.entries, pg, seed=m)
                ids += parent_groups[m][given] * VQ_PREVIOUS_GROUPS
            if m > 0:
                given = idx[:, m - 1].reshape(-1)
                previous_groups[m] = _group(symbols, given, entries, entries, VQ_PREVIOUS_GROUPS, seed=100 + m)
                ids += previous_groups[m][given]
            np.add.at(table[m], (ids, symbols), 1)
        prior = (static + 0.5) / (static.sum(1, keepdims=True) + 0.5 * entries)
        frequencies[key] = torch.from_numpy(_frequencies(table, prior[:, None, :]))
        contexts[key] = {
            "previous": torch.from_numpy(previous_groups),
            "parent_groups": pg,
            "previous_groups": VQ_PREVIOUS_GROUPS,
        } | ({"parent": torch.from_numpy(parent_groups)} if parent is not None else {})
    return contexts, frequencies


def export_vq(
    checkpoint: Path,
    data_root: Path,
    name: str = "vq-mcq",
    crops: int = VQ_TABLE_CROPS,
    seed: int = 0,
    ladder: tuple[tuple[int, int], ...] = RATE_LADDER,
) -> Path:
    """Shipped weights of the VQ codec: model, ladder, derived codebooks, index contexts and tables.

    Statistics come from `crops` random 256x256 crops of the training
    photos (never Kodak): usage counts weight the k-means that derives the
    smaller codebooks, then every (level, size) gets its index contexts and
    their tables.
    """
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    config = VQImageConfig(**state["config"])
    model = VQImageModel(config).eval()
    model.load_state_dict(state["model"])
    x = training_crops(data_root, crops, seed)
    full = {lv: {config.entries: (q.keys(), q.values)} for lv, q in enumerate(model.quantisers)}
    usage = _vq_indices(model, x, full)
    derived, sizes = {}, {lv: dict(books) for lv, books in full.items()}
    for level, q in enumerate(model.quantisers):
        for entries in sorted({e for _, e in ladder if e != config.entries}):
            counts = torch.from_numpy(_counts(usage[codebook_key(level, config.entries)], config.entries)).double()
            keys, values = q.derive(entries, counts)
            derived[codebook_key(level, entries)] = {"keys": keys.float(), "values": values.float()}
            sizes[level][entries] = (keys.float(), values.float())
    contexts, frequencies = _vq_context_tables(_vq_indices(model, x, sizes), config)
    shipped = {
        "config": dataclasses.asdict(config),
        "model": {k: v.float().contiguous() for k, v in model.state_dict().items()},
        "ladder": torch.tensor(ladder, dtype=torch.int64),
        "derived": derived,
        "contexts": contexts,
        "frequencies": frequencies,
    }
    extra = {
        "architecture": dataclasses.asdict(config) | {"ladder": [list(p) for p in ladder]},
        "table_statistics": f"{crops} random 256x256 crops of the training photos (seed {seed})",
        "index_contexts": f"{VQ_PARENT_GROUPS} parent x {VQ_PREVIOUS_GROUPS} previous-codebook groups",
    }
    return _ship(name, shipped, model, state, extra)


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True, path_type=Path), required=False)
@click.option("--name", default=None, help="Model name [default: hyperprior-gmm, or vq-mcq for a VQ checkpoint].")
@click.option(
    "--figures",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Instead of exporting: record this Kodak evaluation folder's figures in the manifest.",
)
@data_root_option("Training photos: VQ index tables are counted on them, the hyper head calibrated on them.")
def main(checkpoint: Path | None, name: str, figures: Path | None, data_root: Path) -> None:
    """Export CHECKPOINT as the shipped weights of NAME (or record its --figures)."""
    if figures:
        click.echo(json.dumps(record_figures(figures, name or "hyperprior-gmm")))
    elif checkpoint and torch.load(checkpoint, map_location="cpu", weights_only=False).get("arch") == "vq":
        click.echo(f"wrote {export_vq(checkpoint, data_root, name or 'vq-mcq')}")
    elif checkpoint:
        click.echo(f"wrote {export(checkpoint, data_root, name or 'hyperprior-gmm')}")
    else:
        raise click.UsageError("give a CHECKPOINT to export, or --figures DIR")


if __name__ == "__main__":
    main()
