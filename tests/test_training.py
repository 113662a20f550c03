"""Training: runs, checkpoints atomically, resumes exactly where it stopped; never reads Kodak."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from codec.models.hyperprior import HyperpriorConfig, HyperpriorGMM
from tools.train_image import HOLDOUT_DIR, TRAIN_DIRS, TrainingError, TrainOptions, train


def _fake_data(root: Path) -> None:
    rng = np.random.default_rng(0)
    for sub in (*TRAIN_DIRS, HOLDOUT_DIR):
        (root / sub).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (260, 300, 3), dtype=np.uint8)).save(root / sub / f"{i}.png")


def test_training_resumes_from_its_checkpoint(tmp_path):
    _fake_data(tmp_path / "data")
    small = HyperpriorConfig(channels=8, latent_channels=8, hyper_channels=8, lambdas=(0.01, 0.05))
    opts = TrainOptions(
        data_root=tmp_path / "data", out_dir=tmp_path / "run", steps=2, batch=2, crop=128, eval_every=2, config=small
    )
    train(opts, log=lambda m: None)
    first = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert first["step"] == 2
    opts.steps = 4
    messages = []
    train(opts, log=messages.append)
    second = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert second["step"] == 4 and any("resumed" in m and "step 2" in m for m in messages)
    assert not torch.equal(first["model"]["g_a.0.weight"], second["model"]["g_a.0.weight"])
    curve = (tmp_path / "run" / "curve.csv").read_text().splitlines()
    assert curve[0].startswith("minutes,step") and len(curve) == 1 + 2 * 2  # two evaluations x two levels
    assert not list((tmp_path / "run").glob("*.tmp"))
    before = (tmp_path / "run" / "checkpoint.pt").stat().st_mtime_ns
    for new_schedule in (False, True):  # already at --steps: says so instead of silently doing nothing...
        again = []
        opts.new_schedule = new_schedule
        train(opts, log=again.append)
        assert any("nothing to train" in m for m in again) and not any("resumed" in m for m in again)
    assert (tmp_path / "run" / "checkpoint.pt").stat().st_mtime_ns == before  # ...and writes nothing


def test_training_code_never_names_kodak():
    source = (Path(__file__).resolve().parents[1] / "tools" / "train_image.py").read_text().lower()
    assert "kodak" not in source.replace("kodak is never read here", "")


def test_vq_training_initialises_codebooks_and_resumes(tmp_path):
    from codec.models.vq_image import VQImageConfig

    _fake_data(tmp_path / "data")
    tiny = VQImageConfig(channels=8, latent_channels=8, levels=2, codebooks=2, entries=8)
    opts = TrainOptions(data_root=tmp_path / "data", out_dir=tmp_path / "vq", steps=2, batch=2, crop=128,
                        eval_every=2, arch="vq", config=tiny)  # fmt: skip
    messages = []
    train(opts, log=messages.append)
    assert any("k-means" in m for m in messages)
    state = torch.load(tmp_path / "vq" / "checkpoint.pt", weights_only=False)
    assert state["arch"] == "vq" and state["step"] == 2
    curve = (tmp_path / "vq" / "curve.csv").read_text().splitlines()
    assert len(curve) == 1 + 2  # one evaluation, two prefixes
    wrong = TrainOptions(data_root=tmp_path / "data", out_dir=tmp_path / "vq", steps=3, batch=2, crop=128)
    with pytest.raises(ValueError, match="another model"):
        train(wrong, log=lambda m: None)


def test_a_new_run_continues_from_the_committed_checkpoint(tmp_path, monkeypatch):
    import tools.train_image as train_image

    committed = tmp_path / "committed"
    committed.mkdir()
    (committed / "hyperprior-gmm-checkpoint.pt").write_bytes(b"state")
    (committed / "hyperprior-gmm-curve.csv").write_text("minutes,step\n")
    monkeypatch.setattr(train_image, "COMMITTED", committed)
    run = tmp_path / "run"
    run.mkdir()
    messages = []
    train_image.seed_from_committed(run, "hyperprior-gmm", messages.append)
    assert (run / "checkpoint.pt").read_bytes() == b"state" and (run / "curve.csv").exists() and messages
    (run / "checkpoint.pt").write_bytes(b"newer")
    train_image.seed_from_committed(run, "hyperprior-gmm", messages.append)  # never overwrites a run
    assert (run / "checkpoint.pt").read_bytes() == b"newer"
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    train_image.seed_from_committed(fresh, "vq", messages.append)  # none committed: said, not silent
    assert "no committed checkpoint for vq" in messages[-1] and not list(fresh.iterdir())


def _two_level_run(tmp_path: Path) -> tuple[HyperpriorConfig, TrainOptions, dict]:
    """A tiny two-level hyperprior trained 2 steps: (config, options, model state)."""
    _fake_data(tmp_path / "data")
    small = HyperpriorConfig(channels=8, latent_channels=8, hyper_channels=8, lambdas=(0.01, 0.04))
    opts = TrainOptions(data_root=tmp_path / "data", out_dir=tmp_path / "run", steps=2, batch=2, crop=128,
                        eval_every=2, config=small, warmup=2)  # fmt: skip
    train(opts, log=lambda m: None)
    return small, opts, torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]


def test_new_rate_levels_keep_the_trained_gains_and_restart_the_schedule(tmp_path):
    import csv
    import dataclasses

    from tools.train_image import learning_rate, regain_levels

    small, opts, before = _two_level_run(tmp_path)

    # the pure re-fit: old levels reproduced exactly, a new level halfway in log-lambda is the mean
    state = {k: before[k].clone() for k in ("log_gain", "log_inverse_gain")}
    regain_levels(state, (0.01, 0.04), (0.005, 0.01, 0.02, 0.04))
    assert torch.allclose(state["log_gain"][1], before["log_gain"][0], atol=1e-6)
    assert torch.allclose(state["log_gain"][3], before["log_gain"][1], atol=1e-6)
    assert torch.allclose(state["log_gain"][2], before["log_gain"].mean(0), atol=1e-6)
    extrapolated = 1.5 * before["log_gain"][0] - 0.5 * before["log_gain"][1]
    assert torch.allclose(state["log_gain"][0], extrapolated, atol=1e-6)

    # training on with the new ladder: resumes, re-fits, restarts warm-up from step 2, labels the curve
    opts.config = dataclasses.replace(small, lambdas=(0.005, 0.01, 0.02, 0.04))
    opts.steps = 3
    messages = []
    train(opts, log=messages.append)
    after = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert after["step"] == 3 and after["schedule_start"] == 2 and after["model"]["log_gain"].shape == (4, 8)
    assert any("from 2 to 4" in m for m in messages)
    rows = list(csv.DictReader((tmp_path / "run" / "curve.csv").open()))
    assert {float(r["lambda"]) for r in rows if r["step"] == "2"} == {0.01, 0.04}
    assert {float(r["lambda"]) for r in rows if r["step"] == "3"} == {0.005, 0.01, 0.02, 0.04}
    assert learning_rate(0, 1.0, 2, 10) == 0.5 and learning_rate(10, 1.0, 2, 10) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="another model"):  # other widths are another model, not a new ladder
        train(dataclasses.replace(opts, config=dataclasses.replace(small, channels=16), steps=4), log=lambda m: None)


def test_a_wider_latent_keeps_what_the_model_learned_and_trains_on_at_its_width(tmp_path):
    import dataclasses

    from codec.models.hyperprior import HyperpriorGMM
    from tools.train_image import RATE_RAMP_STEPS, widen_latent

    small, opts, trained = _two_level_run(tmp_path)

    # the pure widening: z and the old channels' mixtures are untouched, the image barely moves
    wide = dataclasses.replace(small, latent_channels=12)
    state = {k: v.clone() for k, v in trained.items()}
    widen_latent(state, small, wide)
    before, after = HyperpriorGMM(small).eval(), HyperpriorGMM(wide).eval()
    before.load_state_dict(trained)
    after.load_state_dict(state)
    x = torch.rand(1, 3, 64, 64)
    q = torch.ones(1)
    with torch.no_grad():
        y0, z0 = before.analyse(x, q)
        y1, z1 = after.analyse(x, q)
        assert torch.equal(y1[:, :8], y0) and torch.allclose(z1, z0, atol=1e-6)
        for p0, p1 in zip(before.mixture_parameters(torch.round(z0)), after.mixture_parameters(torch.round(z1))):
            assert torch.allclose(p1[:, :, :8], p0, atol=1e-6)
        assert y1[:, 8:].abs().sum() > 0  # the new channels carry something from the start
        assert (after.synthesise(torch.round(y1), q) - before.synthesise(torch.round(y0), q)).abs().max() < 0.05
    assert torch.equal(state["log_gain"][:, 8], trained["log_gain"].mean(1))

    # training on: --latent-channels widens the checkpoint, later runs keep its width without it
    messages = []
    train(dataclasses.replace(opts, steps=3, latent_channels=12), log=messages.append)
    assert any("from 8 to 12" in m for m in messages)
    widened = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert widened["rate_ramp"] == {"first_channel": 8, "start": 2, "steps": RATE_RAMP_STEPS}
    # calibrated: the new filters are no longer the default scale
    assert not torch.equal(widened["model"]["g_a.6.weight"][8:], state["g_a.6.weight"][8:])
    train(dataclasses.replace(opts, steps=4), log=lambda m: None)
    last = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert last["step"] == 4 and last["config"]["latent_channels"] == 12 and last["schedule_start"] == 2
    with pytest.raises(ValueError, match="another model"):  # a latent does not shrink
        train(dataclasses.replace(opts, steps=5, latent_channels=10), log=lambda m: None)


def test_a_post_filter_run_adds_a_filter_and_trains_it_alone(tmp_path):
    import dataclasses

    from codec.models.hyperprior import HyperpriorGMM
    from tools.train_image import regain_levels

    small, opts, trained = _two_level_run(tmp_path)
    messages = []
    train(dataclasses.replace(opts, steps=4, post_filter=True, lr=1e-2), log=messages.append)
    assert any("post-filter added" in m for m in messages)
    after = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert after["schedule_start"] == 2 and after["config"]["post_filter_channels"] > 0
    for name, tensor in trained.items():  # the codec itself (so every file) is untouched
        assert torch.equal(after["model"][name], tensor), name
    assert after["model"]["post.convs.2.weight"].abs().sum() > 0  # the zero-initialised last layer learned
    # a later run keeps the filter without the flag, and trains everything again
    train(dataclasses.replace(opts, steps=5), log=lambda m: None)
    last = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert last["config"]["post_filter_channels"] == after["config"]["post_filter_channels"]
    assert not torch.equal(last["model"]["g_a.0.weight"], trained["g_a.0.weight"])
    model = HyperpriorGMM(HyperpriorConfig(**last["config"] | {"lambdas": tuple(last["config"]["lambdas"])}))
    model.load_state_dict(last["model"])
    with pytest.raises(TrainingError, match="trained model"):  # nothing to filter yet
        train(dataclasses.replace(opts, out_dir=tmp_path / "new", post_filter=True), log=lambda m: None)
    # a new ladder of levels re-fits the filter's per-level scales with the gains
    three = dataclasses.replace(small, lambdas=(0.01, 0.02, 0.04))
    train(dataclasses.replace(opts, steps=6, config=three), log=lambda m: None)
    refit = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]["post.log_scale"]
    before = last["model"]["post.log_scale"]
    assert refit.shape == (3, *before.shape[1:])
    state = {k: v.clone() for k, v in last["model"].items()}
    regain_levels(state, small.lambdas, three.lambdas)
    assert torch.allclose(state["post.log_scale"][1], before.mean(0), atol=1e-6)  # halfway in log-lambda
    # a new run whose config asks for a filter gets one
    filtered = dataclasses.replace(small, post_filter_channels=4)
    train(dataclasses.replace(opts, out_dir=tmp_path / "fresh", config=filtered), log=lambda m: None)
    fresh = torch.load(tmp_path / "fresh" / "checkpoint.pt", weights_only=False)
    assert fresh["config"]["post_filter_channels"] == 4 and "post.log_scale" in fresh["model"]


def test_a_hyperprior_decoder_only_run_changes_no_file(tmp_path):
    import dataclasses

    small, opts, trained = _two_level_run(tmp_path)
    train(dataclasses.replace(opts, steps=3, post_filter=True), log=lambda m: None)
    before = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]
    train(dataclasses.replace(opts, steps=5, decoder_only=True, lr=1e-2), log=lambda m: None)
    after = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]
    for name, tensor in before.items():  # the analysis, gains, hyper networks and z prior: every file's bytes
        assert name.startswith(("g_s.", "log_inverse_gain", "post.")) or torch.equal(after[name], tensor), name
    for name in ("g_s.0.weight", "g_s.6.bias", "log_inverse_gain", "post.convs.0.weight", "post.convs.2.weight"):
        assert not torch.equal(after[name], before[name]), name


def test_an_entropy_only_run_trains_the_hyper_synthesis_alone(tmp_path):
    import dataclasses

    small, opts, trained = _two_level_run(tmp_path)
    before = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]
    messages = []
    train(dataclasses.replace(opts, steps=opts.steps + 4, entropy_only=True, lr=1e-2), log=messages.append)
    after = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]
    for name, tensor in before.items():  # analysis, gains, synthesis, filter, z prior: no pixel can change
        assert name.startswith("h_s.") or torch.equal(after[name], tensor), name
    for name in ("h_s.4.weight", "h_s.4.bias"):  # (an untrained model's rounded z may be all 0: no gradient before)
        assert not torch.equal(after[name], before[name]), name
    with pytest.raises(TrainingError, match="hyper-synthesis alone"):
        train(dataclasses.replace(opts, entropy_only=True, decoder_only=True), log=lambda m: None)
    with pytest.raises(TrainingError, match="hyperprior-gmm model only"):
        train(dataclasses.replace(opts, entropy_only=True, arch="vq"), log=lambda m: None)


def test_the_entropy_only_loss_is_the_coded_rounded_latents_bits():
    """Its bpp is -log2 of the mixture probabilities of round(y) given h_s(round(z)): what the coder writes."""
    from codec.models.hyperprior import mixture_likelihood
    from tools.train_image import HyperpriorArch

    torch.manual_seed(0)
    model = HyperpriorGMM(HyperpriorConfig(channels=8, latent_channels=8, hyper_channels=8, lambdas=(0.01, 0.1)))
    x = torch.rand(2, 3, 64, 64)
    loss, bpp, mse = HyperpriorArch().entropy_loss(model, x, np.random.default_rng(0))
    quality = torch.from_numpy(np.random.default_rng(0).integers(0, 2, 2))
    with torch.no_grad():
        y, z = model.analyse(x, quality)
        w, m, s = model.mixture_parameters(torch.round(z))
        bits = -torch.log2(mixture_likelihood(torch.round(y), w, m, s)).flatten(1).sum(1)
    assert torch.allclose(bpp, bits / 64**2) and torch.isclose(loss, torch.log(bits).mean())
    assert torch.isnan(mse).all()  # the pixels are not decoded


def test_a_vq_post_filter_run_keeps_every_index_and_value(tmp_path):
    from codec.models.vq_image import RATE_LADDER, VQImageConfig, VQImageModel

    _fake_data(tmp_path / "data")
    tiny = VQImageConfig(channels=8, latent_channels=8, levels=2, codebooks=2, entries=8)
    opts = TrainOptions(data_root=tmp_path / "data", out_dir=tmp_path / "vq", steps=2, batch=2, crop=128,
                        eval_every=10, arch="vq", config=tiny)  # fmt: skip
    train(opts, log=lambda m: None)
    before = torch.load(tmp_path / "vq" / "checkpoint.pt", weights_only=False)["model"]
    opts.post_filter, opts.steps, opts.lr = True, 203, 1e-2  # past a restart step: none may happen
    messages = []
    train(opts, log=messages.append)
    after = torch.load(tmp_path / "vq" / "checkpoint.pt", weights_only=False)
    for name, tensor in before.items():  # usage is a running count of the (unchanged) assignments
        assert name.endswith(".usage") or torch.equal(after["model"][name], tensor), name
    assert after["model"]["post.log_scale"].shape[0] == len(RATE_LADDER)
    assert after["model"]["post.convs.2.weight"].abs().sum() > 0
    assert any("post-filter added" in m for m in messages) and not any("restarted" in m for m in messages)
    model = VQImageModel(VQImageConfig(**after["config"])).eval()
    model.load_state_dict(after["model"])
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x, 1)
        assert not torch.equal(out.x_hat, out.x_plain)
        assert torch.allclose(model.decode_indices(out.indices), out.x_hat, atol=1e-5)


def test_the_rate_ramp_lets_new_channels_learn_before_they_pay():
    from codec.models.hyperprior import HyperpriorGMM
    from tools.train_image import RateRamp, rate_distortion_loss

    ramp = RateRamp(first_channel=8, start=10, steps=4)
    assert ramp.weights(10, 12).tolist() == [1.0] * 8 + [0.0] * 4
    assert ramp.weights(12, 12).tolist() == [1.0] * 8 + [0.5] * 4
    assert ramp.weights(99, 12).tolist() == [1.0] * 12

    torch.manual_seed(0)
    model = HyperpriorGMM(HyperpriorConfig(channels=8, latent_channels=12, hyper_channels=8, lambdas=(0.01,)))
    x, q = torch.rand(2, 3, 64, 64), torch.zeros(2)
    results = []
    for weight in (None, torch.ones(12), ramp.weights(10, 12)):
        torch.manual_seed(1)  # the same training noise each time
        results.append(rate_distortion_loss(model, x, q, weight))
    (full, bpp, _), (same, bpp_same, _), (free, bpp_free, _) = results
    assert torch.allclose(full, same) and torch.equal(bpp, bpp_same)
    assert free < full and torch.equal(bpp_free, bpp)  # the loss discounts, the reported rate does not


def test_a_vq_run_can_start_from_the_hyperprior_transforms(tmp_path):
    from codec.models.hyperprior import HyperpriorGMM
    from codec.models.vq_image import VQImageConfig, VQImageModel
    from tools.train_image import load_transforms

    source = HyperpriorGMM(HyperpriorConfig(channels=8, latent_channels=8, hyper_channels=8, lambdas=(0.01,)))
    torch.save({"model": source.state_dict()}, tmp_path / "gmm.pt")
    vq = VQImageModel(VQImageConfig(channels=8, latent_channels=8, levels=2, codebooks=2, entries=8))
    assert load_transforms(vq, tmp_path / "gmm.pt") == sum(
        1 for k in source.state_dict() if k.startswith(("g_a.", "g_s."))
    )
    assert torch.equal(vq.g_s[0].weight, source.g_s[0].weight)
    wider = VQImageModel(VQImageConfig(channels=16, latent_channels=8, levels=2, codebooks=2, entries=8))
    with pytest.raises(ValueError, match="shape"):
        load_transforms(wider, tmp_path / "gmm.pt")


def test_a_new_run_takes_the_widths_of_the_transforms_it_starts_from(tmp_path):
    from codec.models.vq_image import VQImageConfig

    _fake_data(tmp_path / "data")
    wide = HyperpriorConfig(channels=8, latent_channels=16, hyper_channels=8, lambdas=(0.01,))
    gmm = TrainOptions(data_root=tmp_path / "data", out_dir=tmp_path / "gmm", steps=1, batch=2, crop=128,
                       eval_every=1, config=wide)  # fmt: skip
    source = train(gmm, log=lambda m: None)
    vq = TrainOptions(data_root=tmp_path / "data", out_dir=tmp_path / "vq", steps=1, batch=2, crop=128, eval_every=1,
                      arch="vq", config=VQImageConfig(levels=2, codebooks=2, entries=8), init_from=source)  # fmt: skip
    state = torch.load(train(vq, log=lambda m: None), weights_only=False)
    assert (state["config"]["channels"], state["config"]["latent_channels"]) == (8, 16)


def test_frozen_transforms_stay_put_while_the_codebooks_learn(tmp_path):
    from codec.models.vq_image import VQImageConfig

    _fake_data(tmp_path / "data")
    tiny = VQImageConfig(channels=8, latent_channels=8, levels=2, codebooks=2, entries=8)
    opts = TrainOptions(data_root=tmp_path / "data", out_dir=tmp_path / "vq", steps=1, batch=2, crop=128,
                        eval_every=10, arch="vq", config=tiny, freeze_transforms=True)  # fmt: skip
    train(opts, log=lambda m: None)
    first = torch.load(tmp_path / "vq" / "checkpoint.pt", weights_only=False)["model"]
    opts.steps = 3
    train(opts, log=lambda m: None)
    second = torch.load(tmp_path / "vq" / "checkpoint.pt", weights_only=False)["model"]
    assert torch.equal(first["g_a.0.weight"], second["g_a.0.weight"])
    assert torch.equal(first["g_s.0.weight"], second["g_s.0.weight"])
    assert not torch.equal(first["quantisers.0.values"], second["quantisers.0.values"])
    assert not torch.equal(first["down.0.weight"], second["down.0.weight"])
    opts.freeze_level_maps, opts.steps = True, 5  # the level maps stay too, the codebooks still learn
    train(opts, log=lambda m: None)
    kept = torch.load(tmp_path / "vq" / "checkpoint.pt", weights_only=False)["model"]
    assert torch.equal(second["down.0.weight"], kept["down.0.weight"])
    assert torch.equal(second["up.0.weight"], kept["up.0.weight"])
    assert not torch.equal(second["quantisers.0.values"], kept["quantisers.0.values"])
    second, opts.freeze_level_maps = kept, False
    opts.freeze_transforms, opts.steps = False, 6  # then fine-tune everything: a fresh optimiser
    messages = []
    train(opts, log=messages.append)
    third = torch.load(tmp_path / "vq" / "checkpoint.pt", weights_only=False)["model"]
    assert any("optimiser reset" in m for m in messages)
    assert not torch.equal(second["g_a.0.weight"], third["g_a.0.weight"])


def test_a_decoder_only_run_keeps_every_key_and_what_is_matched_to_it(tmp_path):
    from codec.models.vq_image import VQImageConfig

    _fake_data(tmp_path / "data")
    tiny = VQImageConfig(channels=8, latent_channels=8, levels=2, codebooks=2, entries=8)
    opts = TrainOptions(data_root=tmp_path / "data", out_dir=tmp_path / "vq", steps=2, batch=2, crop=128,
                        eval_every=10, arch="vq", config=tiny, decoder_only=True)  # fmt: skip
    with pytest.raises(TrainingError, match="fine-tunes a trained"):  # nothing to fine-tune yet
        train(opts, log=lambda m: None)
    opts.decoder_only = False
    train(opts, log=lambda m: None)
    before = torch.load(tmp_path / "vq" / "checkpoint.pt", weights_only=False)["model"]
    opts.decoder_only, opts.steps = True, 203  # past a restart step: none may happen
    messages = []
    train(opts, log=messages.append)
    after = torch.load(tmp_path / "vq" / "checkpoint.pt", weights_only=False)["model"]
    kept = ("g_a.0.weight", "down.0.weight", "down.0.bias", "quantisers.0.key_map", "quantisers.1.key_map",
            "quantisers.0.bases", "quantisers.1.bases")  # fmt: skip
    for name in kept:
        assert torch.equal(before[name], after[name]), name
    for name in ("g_s.0.weight", "up.0.weight", "quantisers.0.values", "quantisers.1.values"):
        assert not torch.equal(before[name], after[name]), name
    assert not any("restarted" in m for m in messages)
    opts.freeze_transforms = True
    with pytest.raises(TrainingError, match="chooses the trained parts"):
        train(opts, log=lambda m: None)
    with pytest.raises(TrainingError, match="fine-tunes a trained"):
        train(TrainOptions(data_root=tmp_path / "data", out_dir=tmp_path / "h", decoder_only=True), log=lambda m: None)


def test_the_cli_refuses_flags_that_do_not_fit_before_it_writes_anything(tmp_path):
    from click.testing import CliRunner

    from tools.cli import cli

    _fake_data(tmp_path / "data")
    out = tmp_path / "run"
    base = ["train", "image", "--data", str(tmp_path / "data"), "--out", str(out)]
    cases = ((["--freeze-level-maps"], "vq model only"),
             (["--arch", "vq", "--decoder-only", "--freeze-transforms"], "chooses the trained parts"),
             (["--arch", "vq", "--latent-channels", "256"], "hyperprior-gmm model only"),
             (["--arch", "vq", "--post-filter", "--decoder-only"], "post-filter alone"),
             (["--post-filter", "--freeze-transforms"], "post-filter alone"))  # fmt: skip
    cases += ((["--crop", "100"], "multiples of 64"), (["--crop", "0"], "--crop"), (["--batch", "0"], "--batch"),
              (["--device", "bogus"], "unknown device"), (["--device", "cuda"], "no CUDA device"),
              (["--lr", "-1"], "--lr"), (["--max-minutes", "-1"], "--max-minutes"))  # fmt: skip
    for flags, needle in cases:
        if flags == ["--device", "cuda"] and torch.cuda.is_available():
            continue
        r = CliRunner().invoke(cli, base + flags)
        assert r.exit_code == 2 and needle in r.stderr and "Traceback" not in r.output, r.output
        assert not out.exists()  # no committed checkpoint copied into a run that cannot start
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    r = CliRunner().invoke(cli, base + ["--steps", "200000"])
    assert r.exit_code == 2 and "not a readable checkpoint" in r.stderr and "Traceback" not in r.output, r.output


def test_exported_weights_replace_their_manifest_entry(tmp_path, monkeypatch):
    import json

    import tools.export_weights as export_weights

    monkeypatch.setattr(export_weights, "WEIGHTS_DIR", tmp_path)
    export_weights.update_manifest("m", {"kodak": {"bpp": [1.0]}, "note": "old weights"})
    export_weights.update_manifest("other", {"kodak": {"bpp": [2.0]}})
    export_weights.update_manifest("m", {"sha256": "new"}, replace=True)
    entries = {e["name"]: e for e in json.loads((tmp_path / "manifest.json").read_text())["models"]}
    assert entries["m"] == {"name": "m", "sha256": "new"}  # no figure of the old weights survives
    assert entries["other"]["kodak"] == {"bpp": [2.0]}
    export_weights.update_manifest("m", {"kodak": {"bpp": [3.0]}})  # figures are added to the entry
    assert json.loads((tmp_path / "manifest.json").read_text())["models"][0]["sha256"] == "new"


def test_a_committed_checkpoint_drops_the_optimiser_and_still_resumes(tmp_path, monkeypatch):
    import dataclasses

    import tools.train_image as train_image

    _fake_data(tmp_path / "data")
    small = HyperpriorConfig(channels=8, latent_channels=8, hyper_channels=8, lambdas=(0.01,))
    opts = TrainOptions(data_root=tmp_path / "data", out_dir=tmp_path / "run", steps=1, batch=2, crop=128,
                        eval_every=1, config=small)  # fmt: skip
    full = train(opts, log=lambda m: None)
    monkeypatch.setattr(train_image, "COMMITTED", tmp_path / "committed")
    (tmp_path / "committed").mkdir()
    out = train_image.commit_checkpoint(full, "hyperprior-gmm")
    slim = torch.load(out, weights_only=False)
    assert slim["optimizer"] is None and slim["step"] == 1
    assert out.stat().st_size < full.stat().st_size
    assert (tmp_path / "committed" / "hyperprior-gmm-curve.csv").read_bytes() == (
        tmp_path / "run" / "curve.csv"
    ).read_bytes()

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    train_image.seed_from_committed(resumed, "hyperprior-gmm", lambda m: None)
    messages = []
    train(dataclasses.replace(opts, out_dir=resumed, steps=2), log=messages.append)
    assert any("no optimiser state" in m for m in messages)
    assert torch.load(resumed / "checkpoint.pt", weights_only=False)["optimizer"] is not None


def test_a_compiled_run_saves_plain_weights_and_falls_back_without_a_compiler(tmp_path, monkeypatch):
    _fake_data(tmp_path / "data")
    small = HyperpriorConfig(channels=8, latent_channels=8, hyper_channels=8, lambdas=(0.01, 0.05))
    opts = TrainOptions(data_root=tmp_path / "data", out_dir=tmp_path / "run", steps=1, batch=2, crop=128,
                        eval_every=1, config=small, compile=True)  # fmt: skip

    class NoBackend:  # what torch.compile gives where no C++ compiler works: fails at the first call
        def __init__(self, model):
            self.model = model

        def __getattr__(self, name):
            return getattr(self.model, name)

        def __call__(self, *args, **kwargs):
            raise torch._dynamo.exc.BackendCompilerFailed(lambda *a: None, RuntimeError("no C++ compiler"), None)

    monkeypatch.setattr(torch, "compile", NoBackend)
    messages = []
    train(opts, log=messages.append)
    assert any("torch.compile failed" in m for m in messages)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 1
    # Trained channels-last, saved in the default layout under the model's own names.
    assert all(v.is_contiguous() for v in state["model"].values())
    assert not any(k.startswith("_orig_mod") for k in state["model"])


def test_a_mirrored_run_keeps_each_checkpoint_without_adam(tmp_path):
    _fake_data(tmp_path / "data")
    small = HyperpriorConfig(channels=8, latent_channels=8, hyper_channels=8, lambdas=(0.01, 0.05))
    opts = TrainOptions(data_root=tmp_path / "data", out_dir=tmp_path / "run", steps=1, batch=2, crop=128,
                        eval_every=1, config=small, mirror=tmp_path / "out")  # fmt: skip
    train(opts, log=lambda m: None)
    mirrored = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=False)
    assert mirrored["step"] == 1 and mirrored["optimizer"] is None
    assert (tmp_path / "out" / "curve.csv").read_text() == (tmp_path / "run" / "curve.csv").read_text()


def test_the_device_pack_is_readable_training_data_with_a_lossless_holdout(tmp_path):
    from tools.device_kit import pack_photos
    from tools.train_image import load_holdout, load_training_images

    _fake_data(tmp_path / "data")
    noise = np.random.default_rng(1).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "data" / TRAIN_DIRS[0] / "noise.jpg", quality=50)
    assert pack_photos(tmp_path / "data", tmp_path / "pack") > 0
    packed = sorted(p.name for p in (tmp_path / "pack" / "data" / TRAIN_DIRS[0]).iterdir())
    assert packed == ["0.webp", "1.webp", "2.webp", "3.webp", "noise.jpg"]  # a JPEG smaller than its WebP stays
    packed_images = load_training_images(tmp_path / "pack" / "data", 128)
    assert len(packed_images) == len(load_training_images(tmp_path / "data", 128))
    assert torch.equal(load_holdout(tmp_path / "pack" / "data"), load_holdout(tmp_path / "data"))


def test_the_device_check_is_reproduced_here_and_verify_catches_a_changed_file(tmp_path, monkeypatch):
    import json
    import zipfile

    from click.testing import CliRunner

    import codec.tiled
    from tools.device_kit import cli

    holdout = tmp_path / "pack" / "data" / HOLDOUT_DIR
    holdout.mkdir(parents=True)
    yy, xx = np.mgrid[0:128, 0:160]
    smooth = np.stack([xx * 0.6, yy * 0.7, (xx + yy) * 0.3], -1).astype(np.uint8)
    Image.fromarray(smooth).save(holdout / "a.png")
    Image.fromarray(smooth[:64, :96].copy()).save(holdout / "b.png")
    runner = CliRunner()
    out = tmp_path / "out"
    # A second "device" that is the CPU stands in for a GPU, so the crosswise branch runs here too.
    real_device = codec.tiled.torch_device
    monkeypatch.setattr(codec.tiled, "torch_device", lambda name: real_device("cpu" if name == "second" else name))
    result = runner.invoke(cli, ["check", "--out", str(out), "--device", "second", "--pack", str(tmp_path / "pack")])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["devices"] == ["cpu", "second"] and len(report["cases"]) == 8
    assert all(case["same_bytes_as_cpu"] == [True] * 3 for case in report["cases"])
    assert all(case["pixels_cpu"] == case["pixels_second"] for case in report["cases"])
    result = runner.invoke(cli, ["verify", str(out), "--pack", str(tmp_path / "pack")])
    assert result.exit_code == 0 and "all equal" in result.output, result.output

    with zipfile.ZipFile(out / "files.zip") as z:
        files = {n: z.read(n) for n in z.namelist()}
    files["hyperprior-gmm-q1.0-cpu-2.vqz"] = files["hyperprior-gmm-q6.0-cpu-2.vqz"]  # another quality's file
    with zipfile.ZipFile(out / "files.zip", "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    result = runner.invoke(cli, ["verify", str(out), "--pack", str(tmp_path / "pack")])
    assert result.exit_code == 1 and "2 differ" in result.output, result.output
