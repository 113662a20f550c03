"""The command line as a user meets it: outputs, one-line errors, exit code 2."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SAMPLE, VECTORS
from PIL import Image

from codec.cli import _ProgressBar, cli, run


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


def _bad(result, needle: str):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    return result


def test_encode_decode_round_trip(runner, tmp_path):
    src = tmp_path / "p.png"
    shutil.copy(SAMPLE, src)
    out = _ok(runner.invoke(cli, ["encode", str(src), "--psnr"]))
    assert "bpp" in out.output and "PSNR" in out.output
    assert (tmp_path / "p.vqz").exists()
    _ok(runner.invoke(cli, ["decode", str(tmp_path / "p.vqz"), "-o", str(tmp_path / "back.png")]))
    assert Image.open(tmp_path / "back.png").size == Image.open(SAMPLE).size


def test_lossless_model_is_exact(runner, tmp_path):
    _ok(runner.invoke(cli, ["encode", str(SAMPLE), "--model", "lossless-delta", "-o", str(tmp_path / "a.vqz")]))
    _ok(runner.invoke(cli, ["decode", str(tmp_path / "a.vqz"), "-o", str(tmp_path / "a.png")]))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(SAMPLE)))


def test_several_inputs_into_a_folder(runner, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    shutil.copy(SAMPLE, a)
    Image.open(SAMPLE).crop((0, 0, 40, 30)).save(b)
    outdir = tmp_path / "out"
    outdir.mkdir()
    _ok(runner.invoke(cli, ["encode", str(a), str(b), "-o", str(outdir), "-q", "2"]))
    assert sorted(p.name for p in outdir.iterdir()) == ["a.vqz", "b.vqz"]
    _bad(runner.invoke(cli, ["encode", str(a), str(b), "-o", str(tmp_path / "nope")]), "folder")


def test_two_inputs_for_one_output_are_refused_before_any_work(runner, tmp_path):
    a = tmp_path / "p.png"
    shutil.copy(SAMPLE, a)
    Image.open(SAMPLE).convert("RGB").save(tmp_path / "p.bmp")
    for extra in ([], ["--force"]):
        _bad(runner.invoke(cli, ["encode", str(a), str(tmp_path / "p.bmp"), *extra]), "would both be written")
    assert not (tmp_path / "p.vqz").exists()


def test_psnr_of_an_opaque_rgba_input(runner, tmp_path):
    rgba = tmp_path / "rgba.png"
    Image.open(SAMPLE).convert("RGBA").save(rgba)
    for model, said in (("hyperprior-gmm", "dB"), ("lossless-delta", "decoded exactly")):  # alpha dropped, kept
        out = _ok(runner.invoke(cli, ["encode", str(rgba), "--psnr", "--model", model, "--force"]))
        assert said in out.output and "100.00" not in out.output  # no stand-in number for an exact copy


def test_decode_writes_the_format_the_name_asks_for(runner, tmp_path):
    src = tmp_path / "p.vqz"
    _ok(runner.invoke(cli, ["encode", str(SAMPLE), "--model", "lossless-delta", "-o", str(src)]))
    _bad(runner.invoke(cli, ["decode", str(src), "-o", str(tmp_path / "p.jpg")]), "lossless")
    assert not (tmp_path / "p.jpg").exists()
    _ok(runner.invoke(cli, ["decode", str(src), "-o", str(tmp_path / "p.tif")]))
    back = Image.open(tmp_path / "p.tif")
    assert back.format == "TIFF" and np.array_equal(np.asarray(back), np.asarray(Image.open(SAMPLE)))
    _bad(runner.invoke(cli, ["decode", str(src), "-o", str(tmp_path / "nope" / "p.png")]), "no such folder")


def test_unreachable_target_bpp_writes_nothing(runner, tmp_path):
    out = tmp_path / "t.vqz"
    _bad(runner.invoke(cli, ["encode", str(SAMPLE), "--target-bpp", "0.001", "-o", str(out)]), "out of reach")
    assert not out.exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["encode", "-q", "abc", "x.png"], "'abc' is not a valid float"),
        (["encode"], "Missing argument"),
        (["--bogus"], "No such option"),
        (["nosuch"], "No such command"),
    ],
)
def test_usage_errors_of_the_console_script_are_one_line(capsys, args, needle):
    with pytest.raises(SystemExit) as done:
        run(args)
    err = capsys.readouterr().err
    assert done.value.code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err


def test_refuses_to_overwrite_without_force(runner, tmp_path):
    out = tmp_path / "x.vqz"
    out.write_bytes(b"keep me")
    _bad(runner.invoke(cli, ["encode", str(SAMPLE), "-o", str(out)]), "--force")
    assert out.read_bytes() == b"keep me"
    _ok(runner.invoke(cli, ["encode", str(SAMPLE), "-o", str(out), "--force"]))
    assert out.read_bytes()[:4] == b"\x89VQZ"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["encode", "missing.png"], "missing.png"),
        (["decode", "missing.vqz"], "missing.vqz"),
        (["info", "missing.vqz"], "missing.vqz"),
        (["encode", str(SAMPLE), "--model", "nope", "-o", "x.vqz"], "unknown codec"),
        (["encode", str(SAMPLE), "-q", "99", "-o", "x.vqz"], "quality"),
        (["encode", str(SAMPLE), "--device", "tpu", "-o", "x.vqz"], "device"),
    ],
)
def test_bad_requests(runner, tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    _bad(runner.invoke(cli, args), needle)


def test_not_an_image(runner, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    _bad(runner.invoke(cli, ["encode", str(bad)]), "not an image")


@pytest.mark.parametrize("command", ["decode", "info"])
def test_corrupt_and_truncated_files(runner, tmp_path, command):
    data = (VECTORS / "lossless_rgb_33x17.vqz").read_bytes()
    cases = {
        "truncated.vqz": (data[:40], "ends"),
        "flipped.vqz": (data[:-3] + b"\xff" + data[-2:], "corrupt"),
        "text.vqz": (b"just some text", "not a .vqz file"),
    }
    for name, (content, needle) in cases.items():
        (tmp_path / name).write_bytes(content)
        _bad(
            runner.invoke(
                cli, [command, str(tmp_path / name), *(["-o", str(tmp_path / "o.png")] if command == "decode" else [])]
            ),
            needle,
        )
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("model", ["hyperprior-gmm", "vq-mcq", "lossless-delta"])
def test_a_file_declaring_more_pixels_than_it_codes_is_refused(runner, tmp_path, model):
    """Header CRC recomputed, so only the streams can tell: they are too short for a picture ten times as tall."""
    from bitstream import ImageInfo, parse, serialize

    src = tmp_path / "p.png"
    Image.open(SAMPLE).convert("RGB").crop((0, 0, 64, 48)).save(src)
    _ok(runner.invoke(cli, ["encode", str(src), "--model", model, "-o", str(tmp_path / "p.vqz")]))
    c = parse((tmp_path / "p.vqz").read_bytes())
    c.media = ImageInfo(64, 480, c.media.channels)
    (tmp_path / "tall.vqz").write_bytes(serialize(c))
    _bad(runner.invoke(cli, ["decode", str(tmp_path / "tall.vqz")]), "ends before its symbols do")
    assert not (tmp_path / "tall.png").exists()


def test_folders_and_self_overwrites_are_refused(runner, tmp_path):
    _bad(runner.invoke(cli, ["decode", "."]), "is a folder")
    out = ["-o", str(tmp_path / "z")]
    for args in (["info", "/dev/zero"], ["decode", "/dev/zero", *out], ["encode", "/dev/zero", *out]):
        _bad(runner.invoke(cli, args), "is a device")  # once read without end
    _bad(runner.invoke(cli, ["encode", str(tmp_path)]), "is a folder")
    src = tmp_path / "p.png"
    shutil.copy(SAMPLE, src)
    _bad(runner.invoke(cli, ["encode", str(src), "-o", str(src), "--force"]), "its own output")
    assert src.read_bytes() == Path(SAMPLE).read_bytes()
    _bad(runner.invoke(cli, ["encode", str(src), "-o", str(tmp_path / "new") + "/"]), "no such folder")
    assert not (tmp_path / "new").exists()


def test_other_weights_are_a_clear_error(runner, tmp_path):
    data = bytearray((VECTORS / "hyperprior_rgb_80x48.vqz").read_bytes())
    from bitstream import parse, serialize

    c = parse(bytes(data))
    c.weights_digest = b"\x01" * 8
    (tmp_path / "other.vqz").write_bytes(serialize(c))
    _bad(runner.invoke(cli, ["decode", str(tmp_path / "other.vqz")]), "weights")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_shows_only_work_of_several_steps(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with _ProgressBar(1, "encoding") as bar:  # one input of one tile: nothing but its result line
        bar.for_input(0)(1, 1)
    assert terminal.getvalue() == ""
    with _ProgressBar(1, "encoding") as bar:  # one input of four tiles: a bar that ends full
        report = bar.for_input(0)
        report(2, 4)
        assert "50%" in terminal.getvalue()
        report(4, 4)
    assert "encoding" in terminal.getvalue() and "100%" in terminal.getvalue()
    terminal.seek(0)
    terminal.truncate()
    with _ProgressBar(2, "decoding") as bar:  # two one-tile inputs: a bar by inputs
        bar.for_input(0)(1, 1)
        assert "50%" in terminal.getvalue()
    monkeypatch.setattr(_Terminal, "isatty", lambda self: False)
    terminal.truncate(0)
    with _ProgressBar(2, "decoding") as bar:  # not a terminal (a log, a pipe): no bar at all
        bar.for_input(0)(1, 1)
    assert terminal.getvalue() == ""


def test_debug_shows_the_traceback(runner):
    result = runner.invoke(cli, ["--debug", "info", "missing.vqz"])
    assert result.exit_code != 0 and isinstance(result.exception, FileNotFoundError)


def test_info_reads_every_vector(runner, vector_index):
    for entry in vector_index.values():
        out = _ok(runner.invoke(cli, ["info", "--json", str(VECTORS / entry["file"])]))
        d = json.loads(out.output)
        assert d["codec"] == entry["codec"] and d["weights_digest"] == entry["weights_digest"]
        assert d["width"] * d["height"] > 0 and d["bits_per_pixel"] > 0 and d["chunks"]
        _ok(runner.invoke(cli, ["info", str(VECTORS / entry["file"])]))


def test_models_lists_the_registry(runner):
    out = _ok(runner.invoke(cli, ["models", "--json"]))
    rows = {m["name"]: m for m in json.loads(out.output)}
    assert {"hyperprior-gmm", "lossless-delta"} <= set(rows)
    assert rows["hyperprior-gmm"]["qualities"] == [1, 11] and rows["lossless-delta"]["qualities"] is None
    assert "-q 1..11 (default 6)" in _ok(runner.invoke(cli, ["models"])).output


def test_models_still_lists_a_codec_whose_weights_fail(runner, monkeypatch):
    from codec import registry
    from codec.weights import WeightsError

    real = registry.get_codec

    def broken(name=None):
        if name == "vq-mcq":
            raise WeightsError("weights file weights/vq-mcq.pt is missing")
        return real(name)

    monkeypatch.setattr(registry, "get_codec", broken)
    out = _ok(runner.invoke(cli, ["models"])).output
    assert "vq-mcq" in out and "unavailable: weights file" in out and "-q 1..11" in out


def test_installed_console_script_finds_its_weights(tmp_path):
    """The `vqz` script of the installed package (not this source tree) encodes with shipped weights."""
    script = Path(sys.executable).with_name("vqz")
    if not script.exists():
        pytest.skip("vqz is not installed in this environment")
    src = tmp_path / "p.png"
    Image.open(SAMPLE).crop((0, 0, 64, 64)).save(src)
    done = subprocess.run([str(script), "encode", str(src)], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    bad = subprocess.run([str(script), "decode", "missing.vqz"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_standard_input_and_output(runner, tmp_path):
    """`-` reads standard input and `-o -` writes standard output, the same bytes as files; the result line
    goes to stderr when stdout carries the output."""
    _ok(runner.invoke(cli, ["encode", str(SAMPLE), "-o", str(tmp_path / "a.vqz")]))
    coded = (tmp_path / "a.vqz").read_bytes()
    piped = _ok(runner.invoke(cli, ["encode", "-", "-o", "-"], input=SAMPLE.read_bytes()))
    assert piped.stdout_bytes == coded and "bpp" in piped.stderr
    _ok(runner.invoke(cli, ["decode", str(tmp_path / "a.vqz"), "-o", str(tmp_path / "a.png")]))
    decoded = _ok(runner.invoke(cli, ["decode", "-", "-o", "-"], input=coded))
    assert decoded.stdout_bytes == (tmp_path / "a.png").read_bytes() and "256x256" in decoded.stderr
    _ok(runner.invoke(cli, ["decode", "-", "-o", str(tmp_path / "b.png")], input=coded))
    assert (tmp_path / "b.png").read_bytes() == (tmp_path / "a.png").read_bytes()
    assert "256x256" in _ok(runner.invoke(cli, ["info", "-"], input=coded)).output


@pytest.mark.parametrize(
    "args, needle",
    [
        (["encode", "-"], "standard input) must be the only input"),
        (["encode", "-", str(SAMPLE), "-o", "."], "standard input) must be the only input"),
        (["encode", "-", "-o", "."], "standard input) must be the only input"),
        (["encode", str(SAMPLE), str(SAMPLE), "-o", "-"], "takes one input, not 2"),
        (["decode", "-", "-o", "x.png"], "not a .vqz file"),
        (["encode", "-", "-o", "x.vqz"], "standard input: not an image file"),
    ],
)
def test_standard_input_and_output_refusals(runner, tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    _bad(runner.invoke(cli, args, input=b"garbage"), needle)
    assert list(tmp_path.iterdir()) == []


def test_a_file_named_dash_is_dot_slash_dash_and_a_folder_named_dash_is_no_stdout(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(SAMPLE, tmp_path / "-")
    named = _ok(runner.invoke(cli, ["encode", "./-", "-o", "a.vqz"], input=b"not this"))  # the file, not stdin
    assert named.output.startswith("./- -> a.vqz: ")  # named so that it does not read as a stream
    assert (tmp_path / "a.vqz").exists()
    (tmp_path / "-").unlink()
    (tmp_path / "-").mkdir()
    piped = _ok(runner.invoke(cli, ["encode", "-", "-o", "-"], input=SAMPLE.read_bytes()))
    assert piped.stdout_bytes == (tmp_path / "a.vqz").read_bytes()


def _vqz(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """The real console entry point in a child process (for what CliRunner cannot fake: ttys, pipes, devices)."""
    command = [sys.executable, "-c", "from tools.cli import main; main()", *args]
    return subprocess.run(command, cwd=Path(__file__).resolve().parents[1], **kwargs)


def test_standard_input_from_a_device_or_closed_is_refused(tmp_path):
    for stdin in (subprocess.DEVNULL, None):  # /dev/null is a device; None: closed below
        if stdin is None:
            done = subprocess.run(
                [sys.executable, "-c", "import os, sys; os.close(0); sys.stdin = None; "
                 "from tools.cli import main; main()", "decode", "-", "-o", str(tmp_path / "x.png")],
                cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
            )  # fmt: skip
        else:
            done = _vqz("decode", "-", "-o", str(tmp_path / "x.png"), stdin=stdin, capture_output=True, text=True)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.count("standard input") == 1 and "standard input: " in done.stderr
    assert not (tmp_path / "x.png").exists()


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    """`vqz decode a.vqz -o - | head -c 8`: no error message (click's handling: exit 1), not an input's failure."""
    import os

    _ok(CliRunner().invoke(cli, ["encode", str(SAMPLE), "-o", str(tmp_path / "a.vqz")]))
    read, write = os.pipe()
    os.close(read)  # nobody will read
    try:
        done = _vqz("decode", str(tmp_path / "a.vqz"), "-o", "-", stdout=write, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write)
    assert done.returncode == 1 and done.stderr == ""


def test_option_errors_are_not_put_down_to_an_input(runner, tmp_path):
    inputs = [str(SAMPLE), str(SAMPLE.with_name("missing.png"))]
    for options, needle in (
        (["--target-bpp", "0"], "a target of 0 bpp: it must be positive"),
        (["-q", "40"], "quality must be between 1 and 11"),
        (["--device", "cuda:7"], "device cuda:7 was asked for"),
        (["--model", "lossless-delta", "--target-bpp", "3"], "so a target bpp does not apply"),
    ):
        failed = _bad(runner.invoke(cli, ["encode", *inputs, "-o", str(tmp_path), *options]), needle)
        assert str(SAMPLE) not in failed.stderr and "stopped" not in failed.stderr
    assert list(tmp_path.iterdir()) == []
    files = tmp_path / "files"
    files.mkdir()
    _ok(runner.invoke(cli, ["encode", str(SAMPLE), "-o", str(files / "lossy.vqz")]))
    _ok(runner.invoke(cli, ["encode", str(SAMPLE), "--model", "lossless-delta", "-o", str(files / "exact.vqz")]))
    # a GPU the machine lacks: refused for the codec that would use it, not put down to its file...
    failed = _bad(runner.invoke(cli, ["decode", str(files / "lossy.vqz"), "--device", "cuda:99"]), "cuda:99 was")
    assert "lossy.vqz" not in failed.stderr and not (files / "lossy.png").exists()
    # ...while the exact codec runs on the CPU whatever the device, in the CLI as in the library
    _ok(runner.invoke(cli, ["decode", str(files / "exact.vqz"), "--device", "cuda:99"]))
    _ok(runner.invoke(cli, ["encode", str(SAMPLE), "--model", "lossless-delta", "-o", str(files / "e2.vqz"),
                            "--device", "cuda:99"]))  # fmt: skip
    _bad(runner.invoke(cli, ["decode", str(files / "exact.vqz"), "--device", "gpu"]), "unknown device")


def test_binary_output_is_refused_on_a_terminal(tmp_path):
    """`-o -` to a terminal would fill it with bytes: one line, exit 2, nothing written (checked on a real pty)."""
    import os
    import pty

    leader, follower = pty.openpty()
    try:
        done = _vqz("encode", str(SAMPLE), "-o", "-", stdout=follower, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(follower)
        os.close(leader)
    assert done.returncode == 2 and "standard output is a terminal" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_quality_is_shown_when_coding_and_by_info(runner, tmp_path):
    """The result line names the quality (the one a --target-bpp search chose); `vqz info` reads it back
    from the header without loading a model."""
    from codec import registry

    line = _ok(runner.invoke(cli, ["encode", str(SAMPLE), "-q", "2.3", "-o", str(tmp_path / "a.vqz")])).output
    assert line.endswith("quality 2.3\n")
    d = json.loads(_ok(runner.invoke(cli, ["info", "--json", str(tmp_path / "a.vqz")])).output)
    assert d["parameters"] == {"quality": 2.3, "tile_size": 1024}  # as given, not float32's 2.2999999523
    assert "quality 2.3, tile size 1024" in _ok(runner.invoke(cli, ["info", str(tmp_path / "a.vqz")])).output
    line = _ok(runner.invoke(cli, ["encode", str(SAMPLE), "--target-bpp", "0.3", "-o", str(tmp_path / "b.vqz")]))
    chosen = json.loads(_ok(runner.invoke(cli, ["info", "--json", str(tmp_path / "b.vqz")])).output)["parameters"]
    shown = float(line.output.rsplit("quality ", 1)[1])  # the whole float32 the header holds, as info reads it
    assert 1 < chosen["quality"] < 11 and shown == chosen["quality"]
    _ok(runner.invoke(cli, ["encode", str(SAMPLE), "--model", "lossless-delta", "-o", str(tmp_path / "c.vqz")]))
    assert json.loads(_ok(runner.invoke(cli, ["info", "--json", str(tmp_path / "c.vqz")])).output)["parameters"] == {
        "method": 2
    }
    older = _ok(runner.invoke(cli, ["info", str(VECTORS / "lossless_rgb_1x1.vqz")])).output  # a left-delta file
    assert "\n  method 0\n" in older
    from bitstream import parse, serialize

    odd = parse((tmp_path / "a.vqz").read_bytes())
    odd.params = b"\x02" + odd.params[1:]  # a parameter layout this vqz does not know: the header is still shown
    (tmp_path / "odd.vqz").write_bytes(serialize(odd))
    shown = _ok(runner.invoke(cli, ["info", str(tmp_path / "odd.vqz")])).output
    assert "parameters unreadable: unknown hyperprior-gmm parameter layout 2" in shown and "256x256" in shown
    _bad(runner.invoke(cli, ["info", str(SAMPLE)]), f"{SAMPLE}: not a .vqz file")  # errors name the file
    odd.params = b"\x01" + bytes.fromhex("0000c07f") + odd.params[5:]  # a NaN quality: no JSON NaN
    (tmp_path / "odd.vqz").write_bytes(serialize(odd))
    d = json.loads(_ok(runner.invoke(cli, ["info", "--json", str(tmp_path / "odd.vqz")])).output)
    assert d["parameters"] == {} and d["parameters_error"] == "quality nan is not a number"
    registry._BUILT.clear()  # info must not need the model: no codec gets built
    _ok(runner.invoke(cli, ["info", str(tmp_path / "a.vqz")]))
    assert registry._BUILT == {}


def test_a_failing_input_is_named_and_the_count_written_before_it_given(runner, tmp_path):
    """Of several inputs, the first that fails stops the command: named, with how many were written before it."""
    _ok(runner.invoke(cli, ["encode", str(SAMPLE), "-o", str(tmp_path / "a.vqz")]))
    shutil.copy(tmp_path / "a.vqz", tmp_path / "b.vqz")
    (tmp_path / "junk.vqz").write_bytes(b"junk")
    (tmp_path / "out").mkdir()
    inputs = [str(tmp_path / n) for n in ("a.vqz", "junk.vqz", "b.vqz")]
    failed = _bad(runner.invoke(cli, ["decode", *inputs, "-o", str(tmp_path / "out")]), "not a .vqz file")
    assert failed.stderr.strip().endswith(
        f"{inputs[1]}: not a .vqz file (wrong magic bytes) (stopped there: 1 of 3 written)"
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png"]  # complete, and kept
    alone = _bad(runner.invoke(cli, ["decode", inputs[1], "-o", str(tmp_path / "j.png")]), f"{inputs[1]}: not a")
    assert "stopped" not in alone.stderr  # one input: nothing to count
    _bad(runner.invoke(cli, ["encode", str(SAMPLE), inputs[1], "-o", str(tmp_path / "out")]), "1 of 2 written")
