"""`vqz eval` and `vqz bdrate`: analytic BD cases, real codec round trips, outputs, resume, errors."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from codec.errors import InvalidRequestError
from tools import baselines, evaluate
from tools.bdrate import CurvesDoNotOverlapError, bd_quality, bd_rate
from tools.cli import cli

RATE = [0.1, 0.25, 0.5, 1.0, 2.0]
PSNR = [26.0, 29.0, 32.0, 35.5, 39.0]


def test_bd_rate_analytic_cases():
    assert bd_rate(RATE, PSNR, [0.8 * r for r in RATE], PSNR) == pytest.approx(-20.0, abs=1e-9)
    assert bd_rate(RATE, PSNR, RATE, PSNR) == pytest.approx(0.0, abs=1e-12)
    assert bd_rate(RATE, PSNR, [1.25 * r for r in RATE], PSNR) == pytest.approx(25.0, abs=1e-9)
    assert bd_quality(RATE, PSNR, RATE, [p + 0.5 for p in PSNR]) == pytest.approx(0.5, abs=1e-9)


def test_bd_rate_refuses_curves_that_do_not_overlap():
    with pytest.raises(CurvesDoNotOverlapError, match="do not overlap"):
        bd_rate(RATE, PSNR, RATE, [p + 20 for p in PSNR])


@pytest.mark.parametrize("name", sorted(baselines.CLASSICAL))
def test_classical_codecs_round_trip(name, sample_pixels):
    codec = baselines.CLASSICAL[name]
    pixels = sample_pixels[:48, :64]
    for q in (codec.qualities[0], codec.qualities[-1]):
        data = codec.encode(pixels, q)
        out = codec.decode(data)
        assert out.shape == pixels.shape and out.dtype == np.uint8
    low = evaluate.psnr(pixels, codec.decode(codec.encode(pixels, codec.qualities[0])))
    high = evaluate.psnr(pixels, codec.decode(codec.encode(pixels, codec.qualities[-1])))
    assert high > low


@pytest.fixture()
def image_folder(tmp_path, sample_pixels):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(sample_pixels[:, :200]).save(folder / "a.png")
    Image.fromarray(sample_pixels[40:, 30:]).save(folder / "b.png")
    (folder / "broken.png").write_text("not an image")
    return folder


def test_eval_outputs_resume_and_schema(image_folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    sweeps = {"jpeg": [20, 60, 90], "webp": [10, 50, 90]}
    summary = evaluate.evaluate(image_folder, ["jpeg", "webp"], out, sweeps, reference="webp")
    assert summary["images"] == 2 and summary["skipped"] == ["broken.png (not an image file Pillow can read)"]
    for name in ("jpeg", "webp"):
        doc = json.loads((out / f"{name}.json").read_text())
        assert doc["name"] == name
        res = doc["results"]
        for key in ("bpp", "psnr-rgb", "ms-ssim", "encoding_time", "decoding_time"):
            assert len(res[key]) == 3 and all(isinstance(v, float) for v in res[key])
        assert res["bpp"] == sorted(res["bpp"]) and 0 < res["ms-ssim"][0] <= 1
    assert (out / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| jpeg |" in (out / "bd.md").read_text()
    rows = (out / "per_image.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 3 * 2

    calls = []
    monkeypatch.setattr(evaluate, "run_task", lambda *a, **k: calls.append(a) or [])
    again = evaluate.evaluate(image_folder, ["jpeg", "webp"], out, sweeps, reference="webp")
    assert calls == [] and again["codecs"] == summary["codecs"]


def test_eval_of_small_grey_and_transparent_images(tmp_path, sample_pixels, monkeypatch):
    """MS-SSIM is undefined under 161 pixels: null in valid JSON and n/a in the table, the rest still measured."""
    folder = tmp_path / "small"
    folder.mkdir()
    Image.fromarray(sample_pixels[:96, :128]).save(folder / "rgb.png")
    Image.fromarray(sample_pixels[:96, :128, 0]).save(folder / "grey.png")  # measured as RGB by every codec
    rgba = np.dstack([sample_pixels[:96, :128], np.full((96, 128), 100, np.uint8)])
    Image.fromarray(rgba).save(folder / "glass.png")
    out = tmp_path / "out"
    summary = evaluate.evaluate(folder, ["jpeg", "webp"], out, {"jpeg": [10, 50, 90], "webp": [10, 50, 90]})
    assert summary["images"] == 2 and summary["skipped"] == ["glass.png (transparent)"]
    for name in ("jpeg", "webp", "raw/jpeg_50.json"):
        text = (out / (name if name.endswith(".json") else f"{name}.json")).read_text()
        json.loads(text, parse_constant=lambda c: pytest.fail(f"{name}: {c} is not JSON"))
    res = json.loads((out / "jpeg.json").read_text())["results"]
    assert res["ms-ssim"] == [None] * 3 and all(p > 20 for p in res["psnr-rgb"])
    table = (out / "bd.md").read_text()
    assert re.search(r"\| jpeg \| [+-]\d.* \| n/a \|", table), table  # PSNR's BD measured, MS-SSIM's n/a
    row = next(r for r in summary["bd"] if r["codec"] == "jpeg")  # (--json): numbers or null, and why
    assert isinstance(row["bd_rate_psnr"], float) and row["bd_rate_msssim"] is None and "bd_rate_psnr" not in row["why"]
    assert row["why"]["bd_rate_msssim"].startswith("n/a: ") and "defined quality" in row["why"]["bd_rate_msssim"]
    # a cached result is for the same pixels, not the same name
    Image.fromarray(sample_pixels[100:196, :128]).save(folder / "rgb.png")
    calls = []
    real = evaluate.run_task
    monkeypatch.setattr(evaluate, "run_task", lambda *a, **k: calls.append(a) or real(*a, **k))
    evaluate.evaluate(folder, ["jpeg", "webp"], out, {"jpeg": [10, 50, 90], "webp": [10, 50, 90]})
    assert len(calls) == 6
    (out / "raw" / "jpeg_50.json").write_text("{damaged")  # a damaged cache entry runs again
    calls.clear()
    evaluate.evaluate(folder, ["jpeg", "webp"], out, {"jpeg": [10, 50, 90], "webp": [10, 50, 90]})
    assert len(calls) == 1


def test_eval_cli_errors(image_folder, tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["eval", "images", str(image_folder), "--codecs", "jpeg,nonsense"])
    assert r.exit_code == 2 and "unknown codec" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = runner.invoke(cli, ["eval", "images", str(empty), "--codecs", "jpeg"])
    assert r.exit_code == 2 and "no images" in r.stderr
    base = ["eval", "images", str(image_folder), "--out", str(tmp_path / "o")]
    cases = [
        (["--codecs", ","], "no codec"),
        (["--codecs", "jpeg,webp", "--qualities", "jpeg=nan,20"], "outside"),
        (["--codecs", "jpeg,webp", "--qualities", "jpeg=500"], "outside 1..100"),
        (["--codecs", "jpeg,webp", "--qualities", "jpeg=50.5,60"], "not a whole number"),
        (["--codecs", "jpeg,webp", "--qualities", "jpg=5,20"], "not among the codecs"),
        (["--codecs", "jpeg,webp", "--qualities", "jpeg=5", "--qualities", "jpeg=20"], "twice"),
        (["--codecs", "vqz:lossless-delta,webp", "--qualities", "vqz:lossless-delta=1,2"], "no quality setting"),
        (["--codecs", "jpeg,jxl"], "--reference webp is not among"),
        (["--codecs", "jpeg", "--out", str(image_folder)], "must not be the folder"),
    ]
    for flags, needle in cases:
        r = runner.invoke(cli, base + flags)
        assert r.exit_code == 2 and needle in r.stderr and "Traceback" not in r.output, (flags, r.output)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # no stray progress-bar label off a terminal
    assert not (tmp_path / "o" / "raw").exists() or not any((tmp_path / "o" / "raw").iterdir())  # nothing ran


def test_eval_and_train_option_ranges_are_one_line(capsys, tmp_path):
    from codec.cli import run

    for args in (["eval", "images", str(tmp_path), "-j", "0"], ["train", "image", "--batch", "0"]):
        with pytest.raises(SystemExit) as done:
            run(args)
        err = capsys.readouterr().err
        assert done.value.code == 2 and len(err.strip().splitlines()) == 1 and "range" in err, err


def test_bdrate_cli(tmp_path):
    ref = {"name": "ref", "results": {"bpp": RATE, "psnr-rgb": PSNR}}
    test = {"name": "test", "results": {"bpp": [0.8 * r for r in RATE], "psnr-rgb": PSNR}}
    far = {"name": "far", "results": {"bpp": RATE, "psnr-rgb": [p + 30 for p in PSNR]}}
    apart = {"name": "apart", "results": {"bpp": [100 * r for r in RATE], "psnr-rgb": [p + 30 for p in PSNR]}}
    for name, doc in (("ref", ref), ("test", test), ("far", far), ("apart", apart)):
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    runner = CliRunner()
    r = runner.invoke(cli, ["bdrate", str(tmp_path / "ref.json"), str(tmp_path / "test.json")])
    assert r.exit_code == 0 and "-20.00%" in r.output
    r = runner.invoke(cli, ["bdrate", str(tmp_path / "ref.json"), str(tmp_path / "far.json")])
    assert r.exit_code == 0 and "BD-rate no overlap in quality, BD-quality +30.000" in r.output  # same rates
    r = runner.invoke(cli, ["bdrate", str(tmp_path / "ref.json"), str(tmp_path / "apart.json")])
    assert r.exit_code == 2 and "do not overlap" in r.stderr and "[0.1, 2] vs [10, 200]" in r.stderr, r.stderr
    (tmp_path / "bad.json").write_text("{}")
    r = runner.invoke(cli, ["bdrate", str(tmp_path / "ref.json"), str(tmp_path / "bad.json")])
    assert r.exit_code == 2 and "schema" in r.stderr
    (tmp_path / "binary.json").write_bytes(b"\x89PNG\r\n")
    (tmp_path / "short.json").write_text(json.dumps({"results": {"bpp": [1, 2], "psnr-rgb": [30]}}))
    (tmp_path / "point.json").write_text(json.dumps({"results": {"bpp": [1], "psnr-rgb": [30]}}))
    (tmp_path / "nan.json").write_text(json.dumps({"results": {"bpp": [1, 2], "psnr-rgb": [30, float("nan")]}}))
    (tmp_path / "scalar.json").write_text(json.dumps({"results": {"bpp": [1, 2], "psnr-rgb": 5}}))
    (tmp_path / "negative.json").write_text(json.dumps({"results": {"bpp": [-1, 2, 3], "psnr-rgb": [30, 31, 32]}}))
    (tmp_path / "blank.json").write_text(json.dumps({"results": {"bpp": [1, 2], "psnr-rgb": [None, None]}}))
    cases = [("binary", "schema"), ("short", "per bpp value"), ("point", "two points")]
    more = [("nan", "per bpp value"), ("scalar", "per bpp value"), ("negative", "'bpp' needs a positive number"),
            ("blank", "a defined quality")]  # fmt: skip
    for name, needle in cases + more:
        r = runner.invoke(cli, ["bdrate", str(tmp_path / "ref.json"), str(tmp_path / f"{name}.json")])
        assert r.exit_code == 2 and needle in r.stderr and "Traceback" not in r.output, r.output


def test_mixed_sizes_exact_copies_and_small_images_are_averaged_honestly(tmp_path, sample_pixels):
    """bpp is bits over pixels of all images; an exact copy has no finite PSNR (its point leaves the PSNR curve,
    with a note); MS-SSIM averages the images large enough for it, the same ones for every codec."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(sample_pixels[:, :200]).save(folder / "big.png")
    Image.fromarray(sample_pixels[:7, :5]).save(folder / "tiny.png")  # header-dominated bpp, no MS-SSIM
    Image.fromarray(np.full((170, 170, 3), 128, np.uint8)).save(folder / "flat.png")  # JPEG codes it exactly
    out = tmp_path / "out"
    summary = evaluate.evaluate(folder, ["jpeg", "webp"], out, {"jpeg": [30, 95], "webp": [10, 90]})
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    sizes = {"big.png": 256 * 200, "tiny.png": 35, "flat.png": 170 * 170}
    doc = json.loads((out / "jpeg.json").read_text())
    for q, bpp in zip(doc["results"]["quality"], doc["results"]["bpp"]):
        mine = [r for r in rows if r["codec"] == "jpeg" and float(r["quality"]) == q]
        assert bpp == pytest.approx(sum(8 * int(r["bytes"]) for r in mine) / sum(sizes[r["image"]] for r in mine))
        big = next(r for r in mine if r["image"] == "big.png")
        assert 0 < float(big["bpp"]) < 8 < float(next(r["bpp"] for r in mine if r["image"] == "tiny.png"))
    exact = [r for r in rows if r["psnr-rgb"] == ""]
    assert exact and all(r["image"] == "flat.png" for r in exact)  # null, not a stand-in number
    assert None in doc["results"]["psnr-rgb"] and any("exactly" in n for n in doc["notes"])
    assert all(v is None or 0 < v < 1 for v in doc["results"]["ms-ssim"])  # tiny.png left out, not poisoning
    assert any(v is not None for v in json.loads((out / "webp.json").read_text())["results"]["ms-ssim"])
    table = (out / "bd.md").read_text()
    assert "Note: MS-SSIM averages 2 of 3 images" in table and "Note: jpeg decoded images exactly" in table
    assert summary["notes"] and all(f"Note: {n}." in table for n in summary["notes"])


def test_a_failing_codec_is_named_and_finished_work_kept(image_folder, tmp_path, monkeypatch):
    import dataclasses

    def fussy(pixels, quality):
        if pixels.shape[1] != 200:  # b.png
            raise ValueError("boom")
        return real.encode(pixels, quality)

    real = baselines.CLASSICAL["jpeg"]
    monkeypatch.setitem(baselines.CLASSICAL, "jpeg", dataclasses.replace(real, encode=fussy))
    out = tmp_path / "out"
    with pytest.raises(evaluate.EvalFailedError, match=r"^jpeg at quality 60 failed on b\.png: boom$"):
        evaluate.evaluate(image_folder, ["webp", "jpeg"], out, {"jpeg": [60], "webp": [10, 90]})
    assert sorted(p.name for p in (out / "raw").iterdir()) == ["webp_10.json", "webp_90.json"]
    r = CliRunner().invoke(cli, ["eval", "images", str(image_folder), "--codecs", "jpeg,webp", "--out", str(out)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    lines = r.stderr.strip().splitlines()  # the first task of jpeg's default sweep fails
    assert len(lines) == 1 and lines[0].endswith("error: jpeg at quality 2 failed on b.png: boom"), r.stderr


def test_worker_failures_keep_the_tasks_that_finished(image_folder, tmp_path):
    images, _ = evaluate.load_images(evaluate.list_images(image_folder))
    finished = []
    tasks = [evaluate.Task("jpeg", 50.0), evaluate.Task("nonsense", 1.0)]
    with pytest.raises(Exception, match="unknown codec 'nonsense'"):
        evaluate._run_in_workers(tasks, images, 2, lambda t, rows: finished.append((t, len(rows))))
    assert finished == [(tasks[0], 2)]


def test_images_too_large_for_a_codec_are_skipped_for_all(tmp_path, sample_pixels):
    folder = tmp_path / "wide"
    folder.mkdir()
    Image.fromarray(sample_pixels[:48, :64]).save(folder / "a.png")
    Image.new("L", (16384, 2)).save(folder / "wide.png")
    images, skipped = evaluate.load_images(evaluate.list_images(folder), baselines.resolve(["jpeg", "webp"]))
    assert list(images) == ["a.png"] and skipped == ["wide.png (16384 pixels a side: webp codes at most 16383)"]
    images, skipped = evaluate.load_images(evaluate.list_images(folder), baselines.resolve(["jpeg"]))
    assert sorted(images) == ["a.png", "wide.png"] and skipped == []


def test_a_run_leaves_only_its_own_summaries(image_folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.json").write_text('{"name": "mine", "results": {"bpp": [1, 2], "psnr-rgb": [30, 33]}}')
    evaluate.evaluate(image_folder, ["jpeg", "webp"], out, {"jpeg": [20, 90], "webp": [10, 90]})
    assert (out / "jpeg.json").exists()
    evaluate.evaluate(image_folder, ["webp"], out, {"webp": [10, 90]}, anchors=[out / "jpeg.json"])
    assert (out / "jpeg.json").exists()  # an anchor of this run is never removed
    evaluate.evaluate(image_folder, ["webp"], out, {"webp": [10, 90]})
    assert not (out / "jpeg.json").exists() and (out / "webp.json").exists() and (out / "mine.json").exists()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(image_folder / "c.png")
    with pytest.raises(InvalidRequestError, match="measured on other images"):
        evaluate.evaluate(image_folder, ["jpeg"], tmp_path / "o2", {"jpeg": [20, 90]}, anchors=[out / "webp.json"])
    with pytest.raises(InvalidRequestError, match="jpeg more than once"):
        evaluate.evaluate(image_folder, ["jpeg", "webp", "jpeg"], out)


def test_bdrate_refuses_results_of_other_images(image_folder, tmp_path, sample_pixels):
    one, two = tmp_path / "one", tmp_path / "two"
    evaluate.evaluate(image_folder, ["jpeg", "webp"], one, {"jpeg": [20, 90], "webp": [10, 90]})
    Image.fromarray(sample_pixels[10:, 10:]).save(image_folder / "a.png")  # same name, other pixels
    evaluate.evaluate(image_folder, ["webp"], two, {"webp": [10, 90]})
    r = CliRunner().invoke(cli, ["bdrate", str(two / "webp.json"), str(one / "jpeg.json")])
    assert r.exit_code == 2 and "measured on different images" in r.stderr
    r = CliRunner().invoke(cli, ["bdrate", str(one / "webp.json"), str(one / "jpeg.json")])
    assert r.exit_code == 0 and "BD-rate" in r.output
