"""The `vqz` console script: the codec commands plus training, evaluation and benchmarks.

The codec commands live in codec/cli.py; the ones here import tools, which
codec must not (imports point one way: tools -> codec -> entropy/bitstream).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import click

from codec.cli import UserError, cli, friendly_errors, progress_bar, run
from tools.bdrate import QUALITY_METRICS
from tools.options import KODAK, data_root_option


def _parse_qualities(values: tuple[str, ...]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for v in values:
        name, sep, qs = v.partition("=")
        if name.strip() in out:
            raise UserError(f"--qualities names {name.strip()} twice")
        try:
            out[name.strip()] = [float(q) for q in qs.split(",")] if sep else []
        except ValueError:
            raise UserError(f"--qualities {v!r}: expected CODEC=Q1,Q2,...") from None
        if not sep or not out[name.strip()]:
            raise UserError(f"--qualities {v!r}: expected CODEC=Q1,Q2,...")
    return out


@cli.group(name="eval")
def eval_group() -> None:
    """Rate-distortion evaluation against other codecs."""


@eval_group.command(name="images")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option(
    "--codecs",
    default="vqz:hyperprior-gmm,jpeg,webp,avif,jxl,jpeg2000",
    show_default=True,
    help="Comma-separated: jpeg, webp, avif, jxl, jpeg2000, vqz:<model>.",
)
@click.option("--qualities", multiple=True, metavar="CODEC=Q1,Q2,...", help="Override a codec's quality sweep.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("eval-results"), show_default=True)
@click.option("--reference", default="webp", show_default=True, help="Codec the BD-rates are measured against.")
@click.option(
    "--anchor",
    "anchors",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="Published results JSON (CompressAI schema) to add to the table and plot.",
)
@click.option("-j", "--jobs", default=1, show_default=True, type=click.IntRange(min=1), help="Worker processes.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@friendly_errors
def eval_images(folder, codecs, qualities, out_dir, reference, anchors, jobs, as_json) -> None:
    """Encode every image of FOLDER with every codec and quality; write tables and plots to --out."""
    from tools import baselines
    from tools.evaluate import evaluate

    names = [c.strip() for c in codecs.split(",") if c.strip()]
    sweeps = _parse_qualities(qualities)
    resolved = baselines.resolve(names)
    total = sum(len(sweeps.get(c.name, c.qualities)) for c in resolved)
    with progress_bar(total, "evaluating") as bar:
        summary = evaluate(folder, names, out_dir, sweeps, reference, jobs, anchors, progress=bar.update)
    if as_json:
        click.echo(json.dumps({k: v for k, v in summary.items() if k != "table"}, indent=2))
        return
    click.echo(
        f"{summary['images']} image{'s' if summary['images'] != 1 else ''}"
        + (f", {len(summary['skipped'])} skipped: " + "; ".join(summary["skipped"]) if summary["skipped"] else "")
    )
    click.echo(summary["table"], nl=False)  # its notes included
    click.echo(f"results in {out_dir}/ (per_image.csv, <codec>.json, bd.md, rd.png)")


@cli.command()
@click.argument("reference", type=click.Path(exists=True, path_type=Path))
@click.argument("test", type=click.Path(exists=True, path_type=Path))
@click.option("--metric", default="psnr-rgb", show_default=True, type=click.Choice(QUALITY_METRICS))
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def bdrate(reference, test, metric, as_json) -> None:
    """BD-rate and BD-quality of TEST against REFERENCE (results JSONs)."""
    from tools.bdrate import compare, load_results

    r = compare(load_results(reference), load_results(test), metric)
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    rate = "no overlap in quality" if r["bd_rate_pct"] is None else f"{r['bd_rate_pct']:+.2f}%"
    quality = "no overlap in rate" if r["bd_quality"] is None else f"{r['bd_quality']:+.3f}"
    click.echo(f"{r['test']} vs {r['reference']} ({metric}): BD-rate {rate}, BD-quality {quality}")


@cli.group()
def train() -> None:
    """Train models (resumable)."""


@train.command(name="image")
@data_root_option("Folder with bsds500/ and sun_hays80/ (never Kodak).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Checkpoint folder (default runs/<arch>); training resumes from its checkpoint.pt.",
)
@click.option(
    "--steps",
    default=30000,
    show_default=True,
    type=click.IntRange(min=1),
    help="The step where the schedule ends and training stops; at or below the checkpoint's step (a new "
    "run folder starts from the committed one: see README, Training) there is nothing to train.",
)
@click.option("--batch", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--crop", default=128, show_default=True, type=click.IntRange(min=64), help="A multiple of 64.")
@click.option("--lr", default=6e-4, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", default=0, type=click.IntRange(min=0), help="Torch threads (0: default).")
@click.option(
    "--max-minutes", default=0.0, type=click.FloatRange(min=0), help="Stop (with a checkpoint) after this long."
)
@click.option("--arch", type=click.Choice(["hyperprior-gmm", "vq"]), default="hyperprior-gmm", show_default=True)
@click.option(
    "--new-schedule", is_flag=True, help="Restart warm-up and cosine decay from the checkpoint's step (up to --steps)."
)
@click.option(
    "--init-from",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A new run starts its analysis/synthesis transforms from these weights (e.g. weights/hyperprior-gmm.pt).",
)
@click.option("--freeze-transforms", is_flag=True, help="Train everything except the analysis/synthesis transforms.")
@click.option(
    "--freeze-level-maps",
    is_flag=True,
    help="vq: keep the level-down/up maps fixed too (their scale drifts against the codebooks in long runs).",
)
@click.option(
    "--decoder-only",
    is_flag=True,
    help="Fine-tune a trained model's decoder side only. vq: values, up maps, synthesis; the analysis, level-down "
    "maps and keys stay, so every index keeps its key (session 9: --lr 5e-5 --new-schedule). hyperprior-gmm: "
    "synthesis, inverse gains and post-filter, for every quality alike in dB; the coded data stays.",
)
@click.option(
    "--entropy-only",
    is_flag=True,
    help="hyperprior-gmm: fine-tune only the hyper-synthesis, on the rounded latents the coder really codes; "
    "no decoded pixel changes, files get smaller (session 12: --lr 1e-4 --new-schedule --batch 16 --crop 256).",
)
@click.option(
    "--post-filter",
    is_flag=True,
    help="Train only the decoder's post-filter (adding one to a model that has none, which starts a new "
    "schedule); the rest of the model, so the coded data of every file, stays. Session 10: --lr 1e-3 --crop 192.",
)
@click.option(
    "--latent-channels",
    default=0,
    type=click.IntRange(min=0),
    help="hyperprior-gmm latent width M (0: the model's); above the checkpoint's, the trained model is widened.",
)
@click.option(
    "--compile",
    "compile_model",
    is_flag=True,
    help="torch.compile the training step: about a minute to compile, then ~8% faster steps on a CPU.",
)
@click.option("--export", is_flag=True, help="Afterwards, export the checkpoint as the shipped weights.")
@friendly_errors
def train_image(
    data_root,
    out_dir,
    steps,
    batch,
    crop,
    lr,
    device,
    threads,
    max_minutes,
    arch,
    new_schedule,
    init_from,
    freeze_transforms,
    freeze_level_maps,
    decoder_only,
    entropy_only,
    post_filter,
    latent_channels,
    compile_model,
    export,
) -> None:
    """Train an image model (resumes from --out/checkpoint.pt)."""
    from tools.train_image import TrainOptions, check_options, seed_from_committed
    from tools.train_image import train as run

    out_dir = out_dir or Path("runs") / arch
    if not (data_root / "bsds500").is_dir():
        raise UserError(f"{data_root}: no bsds500/ training folder there (--data names the folder that has one)")
    opts = TrainOptions(
        data_root=data_root,
        out_dir=out_dir,
        steps=steps,
        batch=batch,
        crop=crop,
        lr=lr,
        device=device,
        threads=threads,
        max_minutes=max_minutes,
        arch=arch,
        new_schedule=new_schedule,
        init_from=init_from,
        freeze_transforms=freeze_transforms,
        freeze_level_maps=freeze_level_maps,
        decoder_only=decoder_only,
        entropy_only=entropy_only,
        post_filter=post_filter,
        latent_channels=latent_channels,
        compile=compile_model,
    )
    check_options(opts)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not init_from:  # a run that names its start does not take the committed checkpoint's
        seed_from_committed(out_dir, arch, log=lambda m: click.echo(m, err=True))
    with contextlib.ExitStack() as stack:
        bar = None  # made at the first step, so that it counts this run's steps, not the checkpoint's

        def progress(step: int, summary: str) -> None:
            nonlocal bar
            if bar is None:
                bar = stack.enter_context(progress_bar(steps - step + 1, "training", item_show_func=lambda t: t))
            bar.update(1, current_item=summary)

        checkpoint = run(opts, log=lambda m: click.echo(m, err=True), progress=progress)
    if export:
        from tools.export_weights import export as export_gmm
        from tools.export_weights import export_vq

        click.echo(f"wrote {export_vq(checkpoint, data_root) if arch == 'vq' else export_gmm(checkpoint, data_root)}")


@cli.group()
def bench() -> None:
    """Benchmarks (figures for README.md and docs/)."""


@bench.command(name="entropy")
@click.option("--json", "as_json", is_flag=True)
@click.option("--symbols", default=10**6, show_default=True, type=click.IntRange(min=1))
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(min=1))
@click.pass_context
@friendly_errors
def bench_entropy(ctx, as_json, symbols, repeats) -> None:
    """Entropy layer: coded size over the ideal, throughput."""
    from tools.bench_entropy import main as run

    ctx.invoke(run, as_json=as_json, symbols=symbols, repeats=repeats)


@bench.command(name="image-speed")
@click.option(
    "--kodak", type=click.Path(path_type=Path), default=None, help="Kodak folder (default ../shared/data/kodak)."
)
@click.option("--images", default=24, show_default=True, type=click.IntRange(min=1))
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--quality", type=float, default=None, help="Default: the model's default quality.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@friendly_errors
def bench_image_speed(ctx, kodak, images, repeats, quality, as_json) -> None:
    """Encode/decode time per Kodak image against CompressAI's ScaleHyperprior."""
    from tools import bench_image

    bench_image.check_kodak(kodak or KODAK)

    ctx.invoke(
        bench_image.speed_command,
        kodak=kodak or KODAK,
        images=images,
        repeats=repeats,
        quality=quality,
        as_json=as_json,
    )


@bench.command(name="tiles")
@click.option(
    "--kodak", type=click.Path(path_type=Path), default=None, help="Kodak folder (default ../shared/data/kodak)."
)
@click.option("--quality", type=float, default=None, help="Default: the model's default quality.")
@click.option(
    "--size", default=8000, show_default=True, type=click.IntRange(min=64), help="Side of the memory test image."
)
@click.pass_context
@friendly_errors
def bench_tiles(ctx, kodak, quality, size) -> None:
    """Seam cost of tiling (2000x2000) and peak memory (8000x8000)."""
    from tools import bench_image

    bench_image.check_kodak(kodak or KODAK)

    ctx.invoke(bench_image.tiles_command, kodak=kodak or KODAK, quality=quality, size=size, as_json=True)


@bench.command(name="vq")
@click.option(
    "--kodak", type=click.Path(path_type=Path), default=None, help="Kodak folder (default ../shared/data/kodak)."
)
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@friendly_errors
def bench_vq(ctx, kodak, repeats, as_json) -> None:
    """vq-mcq: codebook utilisation, entropy-coding saving, decode time vs hyperprior-gmm."""
    from tools import bench_image, bench_vq

    bench_image.check_kodak(kodak or KODAK)
    ctx.invoke(bench_vq.main, kodak=kodak or KODAK, repeats=repeats, as_json=as_json)


@bench.command(name="lossless")
@click.option(
    "--kodak", type=click.Path(path_type=Path), default=None, help="Kodak folder (default ../shared/data/kodak)."
)
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@friendly_errors
def bench_lossless(ctx, kodak, repeats, as_json) -> None:
    """lossless-delta against PNG and WebP lossless: bits per pixel, encode and decode times."""
    from tools import bench_image, bench_lossless

    bench_image.check_kodak(kodak or KODAK)
    ctx.invoke(bench_lossless.main, kodak=kodak or KODAK, repeats=repeats, as_json=as_json)


def main() -> None:
    # compressai's import triggers a torch deprecation warning a CLI user can do nothing about (codec's
    # models silence it where they import compressai; a tool may import compressai's models first)
    warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)
    run(prog_name="vqz")


if __name__ == "__main__":
    main()
