"""`vqz eval images`: rate-distortion evaluation of codecs on a folder of images.

For every codec and quality setting, every image is encoded to a complete
file, decoded, and measured: bpp = 8 x file bytes / pixels (headers
included), PSNR-RGB and MS-SSIM on the decoded 8-bit image, encode and
decode seconds. Each (codec, quality) is one task, run in worker processes
(-j) and saved on completion under OUTDIR/raw/, so an interrupted run
resumes where it stopped; a codec that fails on an image stops the run
with one line naming both, after saving every task that finished.

Into OUTDIR: per_image.csv, <codec>.json per codec (CompressAI's results
schema), bd.md (BD-rate/BD-PSNR table against the reference codec) and
rd.png (the RD plot); summaries of codecs an earlier run measured there
and this one did not are removed, so the folder describes one run.

How a rate point averages its images: bpp is all files' bits over all
images' pixels (with images of one size, as Kodak's, the mean of their
bpp; with mixed sizes a tiny image's header-dominated bpp does not set
the curve); PSNR and MS-SSIM are means over images, as CompressAI's are.
MS-SSIM counts only images of at least 161 pixels a side (5 scales), the
same images for every codec. An image decoded exactly has no finite PSNR:
the point is then left off the PSNR curve (null), with a note, rather
than given a stand-in number that would weigh in the mean.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import multiprocessing
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from bitstream.errors import VqzError
from codec.errors import InvalidRequestError
from codec.fileio import atomic_write
from codec.media import psnr, read_image
from tools import baselines
from tools.bdrate import CurvesDoNotOverlapError, InvalidResultsError, compare, load_results

IMAGE_SUFFIXES = set(
    ".png .jpg .jpeg .jpe .jfif .bmp .tif .tiff .webp .ppm .pgm .pbm .pnm .gif .tga .jp2 .avif".split()
)
METRICS = ("bpp", "psnr-rgb", "ms-ssim", "ms-ssim-db", "encoding_time", "decoding_time")
MS_SSIM_MIN_SIDE = 161  # 5 scales of an 11-tap window
#: a summary JSON this module wrote (others in --out are never touched)
GENERATOR = "vqz eval"


class EvalFailedError(VqzError):
    """A codec failed on an image: the message names the codec, the setting and the image."""


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM on RGB (grey is repeated), 5 scales; NaN for images too small for 5 scales."""
    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim

    if min(a.shape[:2]) < MS_SSIM_MIN_SIDE:
        return float("nan")

    def to(x):
        return torch.from_numpy(np.repeat(x, 3, 2) if x.shape[2] == 1 else x.copy()).permute(2, 0, 1)[None].double()

    return float(_ms_ssim(to(a), to(b), data_range=255.0))


@dataclass(frozen=True)
class Task:
    codec: str
    quality: float

    @property
    def key(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.codec}@{self.quality:g}")


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InvalidRequestError(f"{folder} is not a folder")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise InvalidRequestError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return images


def load_images(
    paths: Sequence[Path], codecs: Sequence[baselines.EvalCodec] = ()
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Readable images by name, as RGB, and the others as "name (why)".

    Every codec is measured on the same RGB pixels: grey is repeated (WebP,
    for one, has no grey mode, and PSNR-RGB is defined on three channels),
    opaque alpha is dropped; transparency has no place in a lossy RD curve.
    An image larger than one of `codecs` can code is skipped for all of
    them, so that every curve is over the same images.
    """
    good, skipped = {}, []
    for p in paths:
        try:
            pixels = read_image(p).without_opaque_alpha().pixels
        except (VqzError, OSError) as exc:
            skipped.append(f"{p.name} ({str(exc).removeprefix(f'{p}: ')})")
            continue
        side = max(pixels.shape[:2])
        too_large = [c for c in codecs if c.max_side and side > c.max_side]
        if pixels.shape[2] == 4:
            skipped.append(f"{p.name} (transparent)")
        elif too_large:
            c = too_large[0]
            skipped.append(f"{p.name} ({side} pixels a side: {c.name} codes at most {c.max_side})")
        else:
            good[p.name] = np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels
    return good, skipped


def _digests(images: dict[str, np.ndarray]) -> dict[str, str]:
    """Content digests: a cached result is reused only for the very same pixels, not the same file name."""
    return {n: hashlib.sha256(f"{a.shape}".encode() + a.tobytes()).hexdigest()[:16] for n, a in images.items()}


def _finite(v: float) -> float | None:
    """JSON has no NaN: an undefined metric (MS-SSIM of a small image, PSNR of an exact copy) is null."""
    return v if math.isfinite(v) else None


def run_task(task: Task, images: dict[str, np.ndarray], threads: int = 0) -> list[dict]:
    """Encode, decode and measure every image at one (codec, quality); `EvalFailedError` names a failure."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    codec = baselines.resolve([task.codec])[0]
    rows = []
    for i, (name, pixels) in enumerate(images.items()):
        try:
            if i == 0:  # untimed: loading weights, compiling kernels, warming caches
                codec.decode(codec.encode(pixels, task.quality))
            rows.append(_measure(codec, task, name, pixels))
        except Exception as exc:  # a library's own failure (WebP's size limit, a crash): named, one line
            raise EvalFailedError(
                f"{task.codec} at quality {task.quality:g} failed on {name}: {str(exc) or type(exc).__name__}"
            ) from exc  # (--debug shows where)
    return rows


def _measure(codec: baselines.EvalCodec, task: Task, name: str, pixels: np.ndarray) -> dict:
    t0 = time.perf_counter()
    data = codec.encode(pixels, task.quality)
    t1 = time.perf_counter()
    decoded = codec.decode(data)
    t2 = time.perf_counter()
    if decoded.shape != pixels.shape:
        raise RuntimeError(f"decoded to shape {decoded.shape}, not {pixels.shape}")
    m = ms_ssim(pixels, decoded)
    return {
        "codec": task.codec,
        "quality": task.quality,
        "image": name,
        "bytes": len(data),
        "bpp": 8 * len(data) / (pixels.shape[0] * pixels.shape[1]),
        "psnr-rgb": _finite(psnr(pixels, decoded)),  # null for an exact copy (infinite)
        "ms-ssim": _finite(m),
        "ms-ssim-db": _finite(-10 * math.log10(1 - m)) if m < 1 else None,
        "encoding_time": t1 - t0,
        "decoding_time": t2 - t1,
    }


def _cached(path: Path) -> dict | None:
    """A saved task's results, or None where there are none or they are damaged (then it runs again)."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and isinstance(saved.get("rows"), list) else None


def _atomic_json(path: Path, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode(), force=True)


def summarise(codec: baselines.EvalCodec, rows: list[dict], sizes: dict[str, tuple[int, int]], images: str) -> dict:
    """CompressAI-style results, one point per quality sorted by rate (how images are averaged: module doc).

    `sizes` holds every image's (height, width), `images` the digest of
    their pixels (`vqz bdrate` refuses to compare results of other images);
    the summary's "notes" say which points are left off a curve.
    """
    by_quality: dict[float, list[dict]] = {}
    for r in rows:
        by_quality.setdefault(r["quality"], []).append(r)
    points, exact = [], []
    for q, rs in by_quality.items():
        mean: dict[str, float | None] = {
            "bpp": sum(8 * r["bytes"] for r in rs) / sum(h * w for h, w in (sizes[r["image"]] for r in rs))
        }
        ms_rows = [r for r in rs if min(sizes[r["image"]]) >= MS_SSIM_MIN_SIDE]
        for m in METRICS[1:]:  # a metric undefined for an image it averages is undefined for the average
            values = [r[m] for r in (ms_rows if m.startswith("ms-ssim") else rs)]
            mean[m] = float(np.mean(values)) if values and all(v is not None for v in values) else None
        if exact_copies := sum(r["psnr-rgb"] is None for r in rs):
            exact.append(f"{q:g} ({exact_copies} of {len(rs)})")
        points.append((mean, q))
    points.sort(key=lambda p: p[0]["bpp"])
    results = {m: [p[0][m] for p in points] for m in METRICS}
    results["quality"] = [p[1] for p in points]
    notes = []
    if exact:
        notes.append(
            f"{codec.name} decoded images exactly at quality {', '.join(exact)}: no finite mean PSNR (nor "
            "MS-SSIM in dB), so those points are left off its PSNR and MS-SSIM-dB curves"
        )
    return {
        "name": codec.name,
        "description": codec.description,
        "generator": GENERATOR,
        "fingerprint": codec.fingerprint,
        "images": len(rows) // max(1, len(points)),
        "images_digest": images,
        "notes": notes,
        "results": results,
    }


def _summary_name(codec: str) -> str:
    return f"{codec.replace(':', '-')}.json"


def _remove_stale_summaries(out_dir: Path, kept: set[str], anchors: Sequence[Path]) -> None:
    """Delete summaries an earlier run wrote into `out_dir` for codecs this run did not measure.

    They would stand beside this run's table and plot, possibly of other
    images; only JSONs marked as this module's are touched, and never one
    this run took as an anchor.
    """
    protected = {a.resolve() for a in anchors}
    for path in out_dir.glob("*.json"):
        if path.name in kept or path.resolve() in protected:
            continue
        try:
            stale = json.loads(path.read_text()).get("generator") == GENERATOR
        except (OSError, ValueError, AttributeError):
            continue
        if stale:
            path.unlink(missing_ok=True)


def _cell(row: dict, field: str, unit: str = "%") -> str:
    """A BD figure for a table cell, or the short form of why there is none ("no overlap", "n/a")."""
    why = row.get("why", {})
    return why[field].split(":")[0] if field in why else f"{row[field]:+.1f}{unit}"


def bd_table(results: list[dict], reference: str) -> tuple[str, list[dict]]:
    """Markdown table of BD-rate (PSNR and MS-SSIM) and BD-PSNR against the reference, and its rows.

    In the rows, a figure that cannot be had is null, and `why` says why
    for each such field (the table shows "no overlap" or "n/a").
    """
    ref = next((r for r in results if r["name"] == reference), None)
    if ref is None:
        raise InvalidRequestError(f"reference codec {reference!r} is not among the evaluated codecs")
    lines = [
        f"| codec | BD-rate vs {reference} (PSNR) | BD-PSNR (dB) | BD-rate (MS-SSIM dB) | bpp range |",
        "|---|---:|---:|---:|---|",
    ]
    rows = []
    for r in results:
        if r is ref:
            continue
        row: dict = {"codec": r["name"]}
        why: dict[str, str] = {}
        for metric, key in (("psnr-rgb", "psnr"), ("ms-ssim-db", "msssim")):
            fields = (f"bd_rate_{key}", f"bd_{key}")
            try:
                c = compare(ref, r, metric)  # a delta whose curves do not overlap is None
                for field, value in zip(fields, (c["bd_rate_pct"], c["bd_quality"])):
                    row[field] = value
                    if value is None:
                        why[field] = "no overlap"
            except CurvesDoNotOverlapError:
                row |= dict.fromkeys(fields)
                why |= dict.fromkeys(fields, "no overlap")
            except InvalidResultsError as exc:  # one point, a metric undefined here, a curve not monotonic
                row |= dict.fromkeys(fields)
                why |= dict.fromkeys(fields, f"n/a: {exc}")
        if why:
            row["why"] = why
        rows.append(row)
        bpp = r["results"]["bpp"]
        lines.append(
            f"| {r['name']} | {_cell(row, 'bd_rate_psnr')} | {_cell(row, 'bd_psnr', '')} | "
            f"{_cell(row, 'bd_rate_msssim')} | {min(bpp):.3f}-{max(bpp):.3f} |"
        )
    return "\n".join(lines) + "\n", rows


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    for r in results:
        res = r["results"]
        ax.plot(
            res["bpp"],
            res["psnr-rgb"],
            marker="o",
            markersize=3,
            label=r["name"],
            linestyle="--" if r.get("anchor") else "-",
        )
    ax.set_xlabel("bits per pixel (whole file)")
    ax.set_ylabel("PSNR-RGB (dB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    atomic_write(path, png.getvalue(), force=True)


def _run_in_workers(
    todo: Sequence[Task], images: dict[str, np.ndarray], jobs: int, finish: Callable[[Task, list[dict]], None]
) -> None:
    """Run tasks in `jobs` processes, `finish` each as it completes; on a failure, the tasks not yet
    started are dropped, the running ones still finished (saved), then the failure is raised."""
    # spawn, not fork: a forked child inherits torch/numba thread pools mid-state and can hang
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_task, t, images, 1): t for t in todo}
        failure = None
        for fut in as_completed(futures):
            if fut.cancelled():
                continue
            if (exc := fut.exception()) is None:
                finish(futures[fut], fut.result())
            elif failure is None:
                failure = exc
                for other in futures:
                    other.cancel()
    if failure is not None:
        raise failure


def evaluate(
    folder: Path,
    codec_names: Sequence[str],
    out_dir: Path,
    qualities: dict[str, Sequence[float]] | None = None,
    reference: str = "webp",
    jobs: int = 1,
    anchors: Sequence[Path] = (),
    progress: Callable[[int], object] | None = None,
) -> dict:
    """Run (or resume) an evaluation; returns the summary that is also written to OUTDIR."""
    codecs = baselines.resolve(codec_names)
    if not codecs:
        raise InvalidRequestError("no codec to evaluate (--codecs is empty)")
    if twice := sorted({c.name for c in codecs if sum(d.name == c.name for d in codecs) > 1}):
        raise InvalidRequestError(f"--codecs names {', '.join(twice)} more than once")
    qualities = qualities or {}
    for name, sweep in qualities.items():  # every setting checked before any work
        codec = next((c for c in codecs if c.name == name), None)
        if codec is None:
            raise InvalidRequestError(f"--qualities names {name}, which is not among the codecs evaluated")
        baselines.check_sweep(codec, sweep)
    anchor_results = [load_results(a) | {"anchor": True} for a in anchors]
    names = [c.name for c in codecs] + [a["name"] for a in anchor_results]
    if len(names) > 1 and reference not in names:
        raise InvalidRequestError(f"--reference {reference} is not among the codecs evaluated ({', '.join(names)})")
    if out_dir.resolve() == folder.resolve():
        raise InvalidRequestError("--out must not be the folder of images (its plot would become one of them)")
    images, skipped = load_images(list_images(folder), codecs)
    if not images:
        shown = "; ".join(skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
        raise InvalidRequestError(f"none of the images in {folder} can be evaluated: {shown}")
    raw = out_dir / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    tasks = [Task(c.name, float(q)) for c in codecs for q in qualities.get(c.name, c.qualities)]
    # what the results depend on: the codec's settings (its description) and library versions / weights
    fingerprints = {c.name: f"{c.description}; {c.fingerprint}" for c in codecs}
    digests = _digests(images)
    images_digest = hashlib.sha256(json.dumps(sorted(digests.items())).encode()).hexdigest()[:16]
    for path, anchor in zip(anchors, anchor_results):  # an earlier run's summary as an anchor: of these images?
        if anchor.get("images_digest", images_digest) != images_digest:
            raise InvalidRequestError(f"--anchor {path} was measured on other images than those in {folder}")
    done: dict[Task, list[dict]] = {}
    for t in tasks:  # resume: reuse results of the same pixels, made by the same library / weights
        saved = _cached(raw / f"{t.key}.json")
        if (
            saved
            and saved.get("images") == digests
            and saved.get("fingerprint") == fingerprints[t.codec]
            and all(r.get("quality") == t.quality for r in saved["rows"])  # the file name rounds it to 6 digits
        ):
            done[t] = saved["rows"]
    todo = [t for t in tasks if t not in done]
    if progress:
        progress(len(tasks) - len(todo))

    def finish(t: Task, rows: list[dict]) -> None:
        _atomic_json(raw / f"{t.key}.json", {"images": digests, "fingerprint": fingerprints[t.codec], "rows": rows})
        done[t] = rows
        if progress:
            progress(1)

    if jobs > 1 and len(todo) > 1:
        _run_in_workers(todo, images, jobs, finish)
    else:
        for t in todo:
            finish(t, run_task(t, images))

    sizes = {n: a.shape[:2] for n, a in images.items()}
    summaries = []
    all_rows = []
    for c in codecs:
        rows = [r for t in tasks if t.codec == c.name for r in done[t]]
        all_rows += rows
        s = summarise(c, rows, sizes, images_digest)
        summaries.append(s)
        _atomic_json(out_dir / _summary_name(c.name), s)
    _remove_stale_summaries(out_dir, {_summary_name(c.name) for c in codecs}, anchors)
    table_csv = io.StringIO()
    w = csv.DictWriter(table_csv, fieldnames=list(all_rows[0]))
    w.writeheader()
    w.writerows(all_rows)
    atomic_write(out_dir / "per_image.csv", table_csv.getvalue().encode(), force=True)
    everything = summaries + anchor_results
    table, bd_rows = bd_table(everything, reference) if len(everything) > 1 else ("", [])
    notes = [n for summary in summaries for n in summary["notes"]]
    if small := sum(min(hw) < MS_SSIM_MIN_SIDE for hw in sizes.values()):
        notes.append(f"MS-SSIM averages {len(images) - small} of {len(images)} images (the others are under "
                     f"{MS_SSIM_MIN_SIDE} pixels a side)")  # fmt: skip
    table += "".join(f"\nNote: {n}.\n" for n in notes)
    atomic_write(out_dir / "bd.md", table.encode(), force=True)
    plot(everything, out_dir / "rd.png", f"{folder.name}: {len(images)} images")
    return {
        "images": len(images),
        "skipped": skipped,
        "notes": notes,
        "codecs": summaries,
        "bd": bd_rows,
        "table": table,
        "reference": reference,
    }
