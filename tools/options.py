"""Command-line options shared by several tools (kept free of torch, so `vqz` starts fast)."""

from __future__ import annotations

from pathlib import Path

import click


def shared_data(name: str) -> Path:
    """The folder `name` of the project's data, ../shared/data/<name> beside the repository.

    Looked for from the working directory first (the repository root, as
    the README's commands are run), then from this checkout's own place,
    so that `vqz train`/`vqz bench` find it from any directory of an
    editable install. An installed copy (site-packages) has no checkout
    beside it: the working-directory path is returned, and the command
    that reads it says it is missing.
    """
    here = Path("../shared/data") / name
    checkout = Path(__file__).resolve().parents[2] / "shared" / "data" / name
    return checkout if not here.is_dir() and checkout.is_dir() else here


DEFAULT_DATA_ROOT = shared_data("train_images")
KODAK = shared_data("kodak")


def data_root_option(help: str):
    """The `--data` option of the commands that read the training photos."""
    return click.option(
        "--data", "data_root", type=click.Path(path_type=Path), default=DEFAULT_DATA_ROOT, show_default=True, help=help
    )
