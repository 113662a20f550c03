"""The `vqz` console script: the codec commands plus training, evaluation and benchmarks.

The codec commands live in codec/cli.py; the ones here import tools, which
codec must not (imports point one way: tools -> codec -> entropy/bitstream).
"""
from __future__ import annotations

from codec.cli import cli


def main() -> None:
    cli(prog_name="vqz")


if __name__ == "__main__":
    main()
