"""The multi-codebook key-value quantiser (building block of the VQ codecs)."""

from __future__ import annotations

import torch

from codec.models.vq import MultiCodebookQuantiser, kmeans


def _data(seed=0, b=4, c=8, h=6, w=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g), g


def test_indices_pick_the_nearest_key_and_lookup_inverts_grouping():
    x, g = _data()
    q = MultiCodebookQuantiser(channels=8, codebooks=2, entries=16)
    idx = q.nearest(x)
    assert idx.shape == (4, 2, 6, 6) and idx.dtype == torch.int64
    keys = q.keys()
    # brute force for one position of codebook 1 (channels 4..7)
    v = x[1, 4:8, 2, 3]
    assert idx[1, 1, 2, 3] == torch.cdist(v[None], keys[1]).argmin()
    with torch.no_grad():
        q.values.copy_(keys)  # values = keys: lookup(nearest(x)) is then the plain VQ of x
    rec = q.lookup(idx)
    assert torch.allclose(rec[1, 4:8, 2, 3], keys[1, idx[1, 1, 2, 3]])
    out = q(x)
    assert torch.equal(out.indices, idx) and torch.allclose(out.values, rec, atol=1e-6)


def test_gradients_reach_encoder_values_and_key_map():
    x, g = _data()
    x.requires_grad_(True)
    q = MultiCodebookQuantiser(8, 2, 16)
    out = q(x)
    (out.values.pow(2).sum() + out.commitment).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert q.values.grad.abs().sum() > 0 and q.key_map.grad.abs().sum() > 0


def test_kmeans_initialisation_and_dead_entry_restart_keep_codebooks_used():
    x, g = _data(1, b=8, h=16, w=16)
    q = MultiCodebookQuantiser(8, 2, 32)
    used_random, _ = q.utilisation(q.nearest(x * 5 + 3), 32)  # far from the random keys: collapse
    q.initialise(x * 5 + 3, generator=g)
    used_init, perplexity = q.utilisation(q.nearest(x * 5 + 3), 32)
    assert used_init.min() > 0.9 and perplexity.min() > 16
    assert used_init.mean() > used_random.mean()
    # starve half the entries, then restart them on encoder outputs
    q.usage[:, :16] = 0
    assert q.restart_dead_entries(x * 5 + 3, generator=g) == 2 * 16
    assert torch.allclose(q.keys()[:, :16].abs().mean(), (x * 5 + 3).abs().mean(), rtol=0.5)


def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(3)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in centres])
    found = kmeans(x, 3, generator=g)
    assert torch.cdist(centres, found).min(1).values.max() < 0.5


def test_vq_image_model_prefixes_decode_and_match_training_path():
    from codec.models.vq_image import VQImageConfig, VQImageModel

    torch.manual_seed(0)
    model = VQImageModel(VQImageConfig(channels=8, latent_channels=8, levels=3, codebooks=2, entries=16)).eval()
    x = torch.rand(2, 3, 128, 64)
    for keep in (1, 2, 3):
        indices = model.encode_indices(x, keep)
        assert [i.shape[-2:] for i in indices] == [(2, 1), (4, 2), (8, 4)][:keep]
        decoded = model.decode_indices(indices)
        with torch.no_grad():
            out = model(x, keep)
        assert decoded.shape == x.shape
        assert torch.allclose(decoded, out.x_hat, atol=1e-5)
        assert all(torch.equal(a, b) for a, b in zip(indices, out.indices))
    assert model.bits(128, 64) == (8 * 4 + 4 * 2 + 2 * 1) * 2 * 4
    assert model.bits(128, 64, keep=1) == 2 * 1 * 2 * 4
    assert model.bits(128, 64, keep=2, finest_entries=4) == 4 * 2 * 2 * 2 + 2 * 1 * 2 * 4  # 1/32 at 4 entries


def test_a_derived_codebook_trains_the_decoder_on_its_rate_point():
    from codec.models.vq_image import VQImageConfig, VQImageModel

    torch.manual_seed(0)
    model = VQImageModel(VQImageConfig(channels=8, latent_channels=8, levels=2, codebooks=2, entries=16)).train()
    x = torch.rand(2, 3, 64, 64)
    q = model.quantisers[0]  # finest level, kept when both levels are
    usage = q.usage.clone()
    keys, values = q.derive(4, torch.ones(2, 16))
    out = model(x, 2, (keys, values))
    assert int(out.indices[1].max()) < 4  # the finest level picks among the derived entries
    expected = model.quantisers[1].lookup(out.indices[0])
    with torch.no_grad():  # what the codec decodes from those indices
        y = model.up[0](expected) + q.lookup(out.indices[1], values)
        assert torch.allclose(model.g_s(y), out.x_hat, atol=1e-5)
    out.x_hat.square().mean().backward()
    assert model.g_s[0].weight.grad is not None
    assert torch.equal(q.usage, usage)  # the own entries' usage is not what was used


def test_a_derived_codebook_replaces_only_the_finest_kept_level():
    from codec.models.vq_image import VQImageConfig, VQImageModel

    torch.manual_seed(0)
    model = VQImageModel(VQImageConfig(channels=8, latent_channels=8, levels=3, codebooks=2, entries=16)).eval()
    x = torch.rand(2, 3, 128, 128)
    middle = model.quantisers[1]  # 1/32: the finest level kept when two of three are
    with torch.no_grad():
        full = model(x, 2)
        derived = model(x, 2, middle.derive(4, torch.ones(2, 16)))
    assert torch.equal(derived.indices[0], full.indices[0])  # 1/64 keeps its full codebook
    assert int(derived.indices[1].max()) < 4 < int(full.indices[1].max())


def test_coarser_levels_restart_rarely_used_entries_at_their_own_threshold():
    from codec.models.vq_image import VQImageConfig, VQImageModel
    from tools.train_image import VQArch

    model = VQImageModel(VQImageConfig(channels=8, latent_channels=8, levels=2, codebooks=2, entries=8))
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    model.initialise_codebooks(x, torch.Generator().manual_seed(1))
    thresholds = [VQArch.RESTART_THRESHOLD * 4**level for level in range(2)]
    assert thresholds == [0.015, 0.06]
    for q in model.quantisers:
        q.usage.fill_(1 / 8)
        q.usage[:, :3] = 0.03 / 8  # rare: dead at the coarse level's threshold, alive at the fine one's
    restarted = model.restart_dead_entries(x, torch.Generator().manual_seed(2), thresholds)
    assert restarted == 2 * 3  # the 1/32 level's two codebooks, three entries each
    assert torch.all(model.quantisers[0].usage[:, :3] == 0.03 / 8)  # 1/16 kept its rare entries
    assert torch.all(model.quantisers[1].usage[:, :3] == 1 / 8)  # restarted ones start at an even share


def test_training_visits_every_point_of_the_shipped_ladder():
    import numpy as np

    from codec.models.vq_image import RATE_LADDER, VQImageConfig, VQImageModel
    from tools.train_image import VQArch

    model = VQImageModel(VQImageConfig(channels=8, latent_channels=8, levels=3, codebooks=2, entries=256))
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    model.initialise_codebooks(x, torch.Generator().manual_seed(1))
    rng, seen = np.random.default_rng(0), set()
    for _ in range(40):
        _, bpp, _ = VQArch().loss(model, x, rng)
        seen.add(round(float(bpp[0]) * 128 * 128))  # fixed-length bits of the point trained
    assert seen == {round(model.bits(128, 128, keep, entries)) for keep, entries in RATE_LADDER}
