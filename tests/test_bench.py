"""The benchmarks' own measuring instruments."""

import subprocess
import sys
from pathlib import Path

from tools.bench_image import peak_rss_kib


def test_peak_memory_is_the_childs_own_not_its_parents():
    # A parent holding 1 GiB more than it needs starts a child: the child's peak must not include the parent's
    # (getrusage's ru_maxrss does: earlier tile benchmarks reported the parent's memory as the child's).
    ballast = bytearray(1 << 30)
    ballast[:: 1 << 12] = b"\x01" * len(ballast[:: 1 << 12])
    child = "from tools.bench_image import peak_rss_kib; print(peak_rss_kib())"
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True)
    assert 0 < int(done.stdout) < (1 << 20)  # KiB: the child's own imports (torch) take about half a GiB
    assert peak_rss_kib() > (1 << 20)  # the parent's own peak does include its ballast
    del ballast


def test_the_seam_benchmark_codes_a_mosaic_whole_and_in_tiles(tmp_path, sample_pixels):
    """Whole-picture coding needs a tile over the decoders' limit: the benchmark lifts it for itself only."""
    import numpy as np
    from PIL import Image

    from codec import tiled
    from tools.bench_image import seams

    picture = np.resize(sample_pixels, (512, 768, 3))  # the mosaic takes 768 x 512 pictures, as Kodak's
    Image.fromarray(picture).save(tmp_path / "a.png")
    limits = (tiled.DEFAULT_TILE, tiled.MAX_TILE)
    r = seams(tmp_path, quality=1.0, size=1100, tile=1024)
    assert r["whole"]["chunks"] == 1 and r["tiled_1024"]["chunks"] == 4
    assert 0 < r["whole"]["bpp"] and abs(r["psnr_cost_db"]) < 1
    assert (tiled.DEFAULT_TILE, tiled.MAX_TILE) == limits  # restored


def test_the_shared_data_is_found_from_any_working_directory(tmp_path, monkeypatch):
    """`vqz train`/`vqz bench` defaults: ../shared/data beside the checkout, not only beside the working directory."""
    from tools import options

    checkout, elsewhere = tmp_path / "work" / "vqz", tmp_path / "elsewhere"
    (tmp_path / "work" / "shared" / "data" / "kodak").mkdir(parents=True)
    elsewhere.mkdir()
    monkeypatch.setattr(options, "__file__", str(checkout / "tools" / "options.py"))
    monkeypatch.chdir(elsewhere)
    assert options.shared_data("kodak") == tmp_path / "work" / "shared" / "data" / "kodak"
    assert options.shared_data("missing") == Path("../shared/data/missing")  # named as the README names it
    (tmp_path / "shared" / "data" / "kodak").mkdir(parents=True)  # one beside the working directory wins
    assert options.shared_data("kodak") == Path("../shared/data/kodak")


def test_the_lossless_benchmark_measures_every_coder_on_every_image(tmp_path, sample_pixels):
    from PIL import Image

    from tools.bench_lossless import run

    Image.fromarray(sample_pixels[:48, :64]).save(tmp_path / "a.png")
    Image.fromarray(sample_pixels[100:160, 30:110]).save(tmp_path / "b.png")
    r = run(tmp_path, repeats=1)
    assert r["images"] == 2 and [row["image"] for row in r["per_image"]] == ["a.png", "b.png"]
    s = r["mean_bpp_and_median_times"]
    assert s["vqz_bpp"] < s["vqz_left_delta_bpp"]  # what the median-edge method is for, on natural pictures
    assert all(s[f"{name}_bpp"] > 0 and s[f"{name}_decode_s"] > 0 for name in ("vqz", "png", "webp_lossless"))
