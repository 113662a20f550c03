from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "tests" / "vectors"
SHARED_DATA = ROOT.parent / "shared" / "data"
SAMPLE = ROOT / "codec" / "samples" / "parrots.png"


@pytest.fixture(scope="session")
def vector_index() -> dict:
    return json.loads((VECTORS / "vectors.json").read_text())


@pytest.fixture(scope="session")
def sample_pixels() -> np.ndarray:
    from codec.media import read_image

    return read_image(SAMPLE).pixels
