"""Shipped weights: the manifest, integrity checks and loading from the installed package.

weights/manifest.json lists every weights file with its sha256; a file's
digest (the first 8 bytes of that hash) is what .vqz files carry. Nothing is
ever downloaded: a missing or altered file is an error that says so.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from codec.errors import CodecError

MANIFEST = "manifest.json"


class WeightsError(CodecError):
    """Shipped weights are missing, unlisted or altered."""


@dataclass(frozen=True)
class WeightsFile:
    name: str
    file: str
    sha256: str
    entry: dict[str, Any]
    data: bytes

    @property
    def digest(self) -> bytes:
        return bytes.fromhex(self.sha256)[:8]


def manifest() -> dict[str, dict[str, Any]]:
    """The manifest's entries by model name (empty if there is none)."""
    path = resources.files("weights").joinpath(MANIFEST)
    if not path.is_file():
        return {}
    return {e["name"]: e for e in json.loads(path.read_text())["models"]}


def load(name: str) -> WeightsFile:
    """Read a model's weights file and verify its sha256 against the manifest."""
    entry = manifest().get(name)
    if entry is None:
        raise WeightsError(f"no weights for {name!r} in weights/{MANIFEST}")
    path = resources.files("weights").joinpath(entry["file"])
    if not path.is_file():
        raise WeightsError(f"weights file weights/{entry['file']} for {name!r} is missing from this installation")
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if sha != entry["sha256"]:
        raise WeightsError(f"weights/{entry['file']} does not match its manifest sha256 (altered or truncated)")
    return WeightsFile(name, entry["file"], sha, entry, data)
