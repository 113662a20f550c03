"""The `vqz` command line: encode, decode, info, models.

Every failure a user can cause (missing file, not an image, corrupt or
truncated .vqz, other weights, bad option) is one line on stderr and exit
code 2; `--debug` shows the traceback instead. Outputs are written
atomically and never replace a file without --force.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

import click

from bitstream import ChunkKind, Container, ImageInfo, VqzError, parse, serialize
from codec import registry
from codec.fileio import STDIN, STDOUT, StandardStream, check_stdout, display_name, read_input, write_output
from codec.media import image_bytes, output_format, psnr, read_image

EXIT_BAD_INPUT = 2


class UserError(click.ClickException):
    exit_code = EXIT_BAD_INPUT

    def show(self, file=None) -> None:
        click.echo(f"vqz: error: {self.message}", err=True)


def _debugging() -> bool:
    return bool(click.get_current_context().find_root().params.get("debug"))


def _message(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


def friendly_errors(fn: Callable) -> Callable:
    """Turn expected failures into one line and exit code 2 (traceback with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:
            raise  # the reader of -o - went away: click ends quietly (exit 1), as `cat` does
        except (VqzError, OSError) as exc:
            if _debugging():
                raise
            raise UserError(_message(exc)) from None

    return wrapper


@contextlib.contextmanager
def _on_input(path: Path | StandardStream, index: int, count: int):
    """A failure while coding input `path` names it; of several inputs, it says how many were written before.

    The first failure stops the command (exit 2), so that a script sees it;
    the outputs already written stay, complete. (Options are checked before
    any input, so that their errors are not put down to one.)
    """
    try:
        yield
    except BrokenPipeError:
        raise
    except (VqzError, OSError) as exc:
        if _debugging():
            raise
        message, name = _message(exc), display_name(path)
        if not message.startswith(f"{name}:") and not (isinstance(exc, OSError) and exc.filename):
            message = f"{name}: {message}"
        if count > 1:
            message += f" (stopped there: {index} of {count} written)"
        raise UserError(message) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="vqz")
def cli(debug: bool) -> None:
    """vqz: learned image codec (audio is planned).

    \b
    vqz encode photo.png            -> photo.vqz
    vqz decode photo.vqz            -> photo.png
    vqz info photo.vqz              header, chunks, bits per pixel
    vqz models                      the codecs this vqz has
    """


def progress_bar(length: int, label: str, **kw):
    """A click progress bar on stderr, shown on a terminal only (elsewhere click would print its bare label,
    a stray line before any error message)."""
    return click.progressbar(length=length, label=label, file=sys.stderr, hidden=not sys.stderr.isatty(), **kw)


class _ProgressBar:
    """One bar on stderr over all inputs, advanced tile by tile within each.

    Shown only on a terminal (elsewhere click would print the bare label, a
    stray line before any error message), and only for work of more than one
    step: several inputs, or one whose coding reports more than one step (a
    tiled picture, a --target-bpp search), so that a one-tile photo prints
    nothing extra while an 8000 x 8000 one, coded for a minute, shows how far
    it has got.
    """

    STEPS = 1000  # bar units per input

    def __init__(self, count: int, label: str):
        self.count, self.label = count, label
        self.bar = None
        self.position = 0

    def __enter__(self) -> "_ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def echo(self, line: str, err: bool = False) -> None:
        """Print a result line above the bar rather than after it on the bar's own line (on stderr where
        stdout carries the output file)."""
        if self.bar is not None:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
        click.echo(line, err=err)
        if self.bar is not None:
            self.bar.render_progress()

    def for_input(self, index: int) -> Callable[[int, int], None]:
        """The `progress(done, total)` callback for input `index` (0-based)."""

        def report(done: int, total: int) -> None:
            if self.bar is None:
                if not sys.stderr.isatty() or (self.count < 2 and total < 2):
                    return
                self.bar = progress_bar(self.count * self.STEPS, self.label).__enter__()
            position = index * self.STEPS + self.STEPS * done // total
            self.bar.update(position - self.position)
            self.position = position

        return report


def _inputs(arguments: Sequence[str]) -> list[Path | StandardStream]:
    """The input arguments as paths, `-` as STDIN (a file named - is ./-: its own path, not standard input)."""
    return [STDIN if a == "-" else Path(a) for a in arguments]


def _output_paths(
    inputs: Sequence[Path | StandardStream], output_name: str | None, suffix: str, force: bool
) -> list[Path | StandardStream]:
    """Where each input's result goes; refused before any work if two would share a file or one exists.

    STDIN (`-`) must be the one input, with -o naming the output; `-o -`
    is STDOUT, for one input, refused on a terminal.
    """
    to_stdout = output_name == "-"
    if STDIN in inputs and (len(inputs) > 1 or output_name is None or (not to_stdout and Path(output_name).is_dir())):
        raise UserError("- (standard input) must be the only input, with -o naming the output (a file, or -)")
    for path in inputs:
        if path is not STDIN and (not path.name or path.is_dir()):
            raise UserError(f"{path}: is a folder, not a file")
    if to_stdout:
        if len(inputs) > 1:
            raise UserError(f"-o - (standard output) takes one input, not {len(inputs)}")
        check_stdout()
        return [STDOUT]
    output = None if output_name is None else Path(output_name)
    if output is not None and output_name.endswith(("/", os.sep)) and not output.is_dir():
        raise UserError(f"-o {output_name}: no such folder")  # a folder was meant: not a file of that name
    if output is None:
        outputs = [p.with_suffix(suffix) for p in inputs]
    elif len(inputs) == 1 and not output.is_dir():
        outputs = [output]
    elif not output.is_dir():
        raise UserError(f"-o must be an existing folder when there are {len(inputs)} inputs")
    else:
        outputs = [output / (p.stem + suffix) for p in inputs]
    seen: dict[Path, Path] = {}
    for path, out in zip(inputs, outputs):
        key = out.resolve()
        if key in seen:
            raise UserError(f"{seen[key]} and {path} would both be written to {out} (code them one at a time with -o)")
        seen[key] = path
        if path is not STDIN and key == path.resolve():  # even with --force: the input would be gone
            raise UserError(f"{path} would be overwritten by its own output (give -o another name)")
        if out.exists() and not force:
            raise UserError(f"{out} exists (give -o another name, or --force to replace it)")
    return outputs


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(allow_dash=True))
@click.option("-o", "--output", type=click.Path(), help="Output file (or folder, for several inputs; - for stdout).")
@click.option("--model", default=None, help=f"Codec name (default {registry.DEFAULT_IMAGE_CODEC}); see `vqz models`.")
@click.option(
    "-q",
    "--quality",
    type=float,
    default=None,
    help="Rate point 1..N of the model (vqz models; hyperprior-gmm interpolates fractions, vq-mcq rounds down).",
)
@click.option(
    "--target-bpp", type=float, default=None, help="Highest quality whose file is at most this many bits per pixel."
)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N: where the networks run.")
@click.option("--psnr", "show_psnr", is_flag=True, help="Also decode and print the PSNR.")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing outputs.")
@friendly_errors
def encode(inputs, output, model, quality, target_bpp, device, show_psnr, force) -> None:
    """Encode images to .vqz files (- reads standard input)."""
    codec = registry.get_codec(model)
    if quality is not None and target_bpp is not None:
        raise UserError("give --quality or --target-bpp, not both")
    codec.check_options(quality=quality, device=device, target_bpp=target_bpp)
    inputs = _inputs(inputs)
    outputs = _output_paths(inputs, output, ".vqz", force)
    with _ProgressBar(len(inputs), "encoding") as bar:
        for index, (path, out) in enumerate(zip(inputs, outputs)):
            with _on_input(path, index, len(inputs)):
                picture = read_image(path)
                progress = bar.for_input(index)
                if target_bpp is not None:
                    container = codec.encode_to_bpp(picture, target_bpp, device=device, progress=progress)
                else:
                    container = codec.encode([picture], quality=quality, device=device, progress=progress)[0]
                data = serialize(container)
                line = f"{display_name(path)} -> {display_name(out)}: {len(data):,} bytes, "
                line += f"{8 * len(data) / picture.info.pixels:.4f} bpp"
                if "quality" in (parameters := registry.parameters(container)):  # what --target-bpp chose
                    line += f", quality {parameters['quality']:.9g}"
                if show_psnr:  # before writing: a failure here leaves no file behind
                    decoded = codec.decode([container], device=device)[0]
                    reference = picture.pixels  # what was coded: opaque alpha is dropped by the lossy codecs only
                    if reference.shape[2] != decoded.pixels.shape[2]:
                        reference = picture.without_opaque_alpha().pixels
                    db = psnr(reference, decoded.pixels)
                    line += ", decoded exactly" if math.isinf(db) else f", PSNR {db:.2f} dB"
                write_output(out, data, force=force)
            bar.echo(line, err=out is STDOUT)


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(allow_dash=True))
@click.option("-o", "--output", type=click.Path(), help="Output file (or folder, for several inputs; - for stdout).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N: where the networks run.")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing outputs.")
@friendly_errors
def decode(inputs, output, device, force) -> None:
    """Decode .vqz files to PNG (or TIFF, BMP, PPM/PGM: by the -o file name's ending; - reads standard input)."""
    registry.device_name(device)  # its form; whether it is there, each file's codec checks (a CPU codec runs anyway)
    inputs = _inputs(inputs)
    outputs = _output_paths(inputs, output, ".png", force)
    formats = ["PNG" if out is STDOUT else output_format(out) for out in outputs]
    with _ProgressBar(len(inputs), "decoding") as bar:
        for index, (path, out, fmt) in enumerate(zip(inputs, outputs, formats)):
            with _on_input(path, index, len(inputs)):
                container = parse(read_input(path))
                codec = registry.codec_for(container)
            codec.check_options(device=device)  # an option error (no such GPU), not this file's
            with _on_input(path, index, len(inputs)):
                picture = codec.decode([container], device=device, progress=bar.for_input(index))[0]
                write_output(out, image_bytes(picture, fmt), force=force)
            line = f"{display_name(path)} -> {display_name(out)}: {picture.info.width}x{picture.info.height}"
            bar.echo(line, err=out is STDOUT)


def describe(container: Container, size: int) -> dict:
    """The header of a parsed file as plain data (what `vqz info` prints)."""
    media = container.media
    out = {
        "format_version": "%d.%d" % container.version,
        "media": container.media_kind.name.lower(),
        "codec": container.codec_id,
        "weights_digest": container.weights_digest.hex(),
        "file_bytes": size,
        "parameters": {},
        "metadata": {k: len(v) for k, v in container.metadata.items()},
        "chunks": [
            {
                "kind": ChunkKind(c.kind).name.lower() if c.kind in set(ChunkKind) else f"0x{c.kind:04x}",
                "bytes": len(c.data),
            }
            for c in container.chunks
        ],
    }
    try:
        out["parameters"] = registry.parameters(container)
    except VqzError as exc:  # shown, not fatal: the rest of the header is still worth seeing
        out["parameters_error"] = str(exc)
    if isinstance(media, ImageInfo):
        out.update(
            width=media.width,
            height=media.height,
            channels=media.channels,
            bit_depth=media.bit_depth,
            bits_per_pixel=8 * size / media.pixels,
        )
    else:
        out.update(
            sample_rate=media.sample_rate,
            channels=media.channels,
            frames=media.frames,
            bits_per_second=8 * size / media.seconds if media.frames else 0.0,
        )
    return out


@cli.command()
@click.argument("file", type=click.Path(allow_dash=True))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@friendly_errors
def info(file: str, as_json: bool) -> None:
    """Show the header of a .vqz file (every checksum is verified; - reads standard input)."""
    (path,) = _inputs([file])
    with _on_input(path, 0, 1):
        data = read_input(path)
        d = describe(parse(data), len(data))
    if as_json:
        click.echo(json.dumps(d, indent=2, allow_nan=False))
        return
    click.echo(
        f"{display_name(path)}: vqz format {d['format_version']}, {d['media']}, codec {d['codec']} "
        f"(weights {d['weights_digest']})"
    )
    if d["media"] == "image":
        click.echo(f"  {d['width']}x{d['height']}, {d['channels']} channel(s), {d['bit_depth']}-bit")
        click.echo(f"  {d['file_bytes']:,} bytes, {d['bits_per_pixel']:.4f} bits per pixel")
    else:
        click.echo(f"  {d['frames']} frames at {d['sample_rate']} Hz, {d['channels']} channel(s)")
        click.echo(f"  {d['file_bytes']:,} bytes, {d['bits_per_second']:.0f} bits per second")
    if d["parameters"]:
        click.echo("  " + ", ".join(f"{k.replace('_', ' ')} {v:.9g}" for k, v in d["parameters"].items()))
    if "parameters_error" in d:
        click.echo(f"  parameters unreadable: {d['parameters_error']}")
    for key, length in d["metadata"].items():
        click.echo(f"  metadata {key}: {length} bytes")
    click.echo(f"  {len(d['chunks'])} chunk(s)")
    for i, c in enumerate(d["chunks"]):
        click.echo(f"    {i}: {c['kind']}, {c['bytes']:,} bytes")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@friendly_errors
def models(as_json: bool) -> None:
    """List the codecs this vqz has, with their quality ranges (-q) and defaults."""
    rows = []
    for e in registry.entries():
        row = {"name": e.name, "default": e.name == registry.DEFAULT_IMAGE_CODEC, "description": e.description,
               "qualities": None, "default_quality": None}  # fmt: skip
        try:
            codec = registry.get_codec(e.name)  # loads the weights: the range comes from them
        except VqzError as exc:  # one broken weights file should not hide the other codecs
            row["description"] += f" (unavailable: {exc})"
        else:
            if codec.levels:
                row.update(qualities=[1, codec.levels], default_quality=getattr(codec, "default_quality", None))
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        q = f"-q 1..{r['qualities'][1]} (default {r['default_quality']:g})" if r["qualities"] else "no -q"
        click.echo(f"{r['name']:15s} {'(default) ' if r['default'] else ''}{r['description']}; {q}")


def run(args: Sequence[str] | None = None, prog_name: str = "vqz") -> None:
    """Run `cli` as the console script: a usage error is one line and exit code 2 as well.

    (click's own standalone mode prints a usage block of several lines first.)
    """
    try:
        result = cli.main(args, prog_name=prog_name, standalone_mode=False)
    except getattr(click.exceptions, "NoArgsIsHelpError", ()) as exc:  # plain `vqz`: the help, as click gives it
        click.echo(exc.format_message(), err=True)
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else prog_name
        click.echo(f"{where}: error: {exc.format_message()} (see {where} --help)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)

    sys.exit(result if isinstance(result, int) else 0)
