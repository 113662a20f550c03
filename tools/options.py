"""Command-line options shared by several tools (kept free of torch, so `vqz` starts fast)."""

from __future__ import annotations

from pathlib import Path

import click

DEFAULT_DATA_ROOT = Path("../shared/data/train_images")


def data_root_option(help: str):
    """The `--data` option of the commands that read the training photos."""
    return click.option(
        "--data", "data_root", type=click.Path(path_type=Path), default=DEFAULT_DATA_ROOT, show_default=True, help=help
    )
