"""Training of the image models (`vqz train image [--arch hyperprior-gmm|vq]`).

Designed for a 2-core CPU first, a GPU when there is one:
- the training photos are decoded once into memory, the large SUN scenes
  also at half size (less JPEG noise, more scale variety);
- every step draws random crops, and every sample of the batch its own
  quality level, so all rate points train together in one set of weights;
- Adam with linear warm-up, cosine decay and gradient clipping (plain
  high-learning-rate recipes diverge on this model, see DESIGN.md);
- checkpoints are written atomically every few minutes and training resumes
  from them exactly (step, optimiser, random state);
- a learning curve (minutes, step, bpp, PSNR on held-out photos) is appended
  to ``curve.csv`` beside the checkpoint.

Kodak is never read here: the held-out photos are BSDS500 test images.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bitstream.errors import VqzError
from codec.fileio import atomic_write
from codec.models.hyperprior import HyperpriorConfig, HyperpriorGMM, mixture_likelihood
from codec.models.vq_image import RATE_LADDER, VQImageConfig, VQImageModel
from codec.tiled import torch_device

TRAIN_DIRS = ("bsds500/train", "bsds500/val", "sun_hays80")


class TrainingError(VqzError, ValueError):
    """A run cannot start as asked (a checkpoint of another model, transforms of another shape)."""


HOLDOUT_DIR = "bsds500/test"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}  # WebP: the pack carried to a GPU (tools/device_kit.py)


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def load_training_images(data_root: Path, crop: int) -> list[np.ndarray]:
    """All training photos as HxWx3 uint8 arrays (plus half-size copies of large ones)."""
    images = []
    for sub in TRAIN_DIRS:
        for path in image_files(data_root / sub):
            with Image.open(path) as im:
                im = im.convert("RGB")
                images.append(np.asarray(im))
                if min(im.size) >= 2 * crop + 64:
                    half = im.resize((im.width // 2, im.height // 2), Image.BICUBIC)
                    images.append(np.asarray(half))
    if not images:
        raise FileNotFoundError(f"no training images under {data_root}")
    return [im for im in images if min(im.shape[:2]) >= crop]


def load_holdout(data_root: Path, count: int = 4, size: int = 256) -> torch.Tensor:
    """Centre crops of the first BSDS500 test photos, as a (count,3,size,size) batch."""
    crops = []
    for path in image_files(data_root / HOLDOUT_DIR)[:count]:
        with Image.open(path) as im:
            a = np.asarray(im.convert("RGB"))
        top, left = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
        crops.append(a[top : top + size, left : left + size])
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0


def random_batch(images: list[np.ndarray], batch: int, crop: int, rng: np.random.Generator) -> torch.Tensor:
    out = np.empty((batch, crop, crop, 3), np.uint8)
    for i in range(batch):
        a = images[rng.integers(len(images))]
        top = rng.integers(a.shape[0] - crop + 1)
        left = rng.integers(a.shape[1] - crop + 1)
        c = a[top : top + crop, left : left + crop]
        if rng.random() < 0.5:
            c = c[:, ::-1]
        if rng.random() < 0.5:
            c = c.transpose(1, 0, 2)
        out[i] = c
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)


def learning_rate(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up to `peak`, then cosine decay to 5% of it at `total` (steps count from the schedule's start)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def post_filter_objective(
    x_hat: torch.Tensor, x_plain: torch.Tensor, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over the batch of ln(MSE after the post-filter / MSE before): a dB gain that weighs every rate alike.

    The MSE before the filter is a constant here (detached): its gradient
    is that of ln(MSE after), so a run that also trains the synthesis
    improves the final image rather than spoiling the unfiltered one.
    Returns (objective, per-sample MSE after the filter, detached: what the
    run logs).
    """
    after = (x_hat - x).pow(2).flatten(1).mean(1)
    before = (x_plain - x).pow(2).flatten(1).mean(1).clamp_min(1e-10).detach()
    return torch.log(after.clamp_min(1e-10) / before).mean(), after.detach()


class HyperpriorArch:
    """hyperprior-gmm: every sample of a batch trains its own random quality level."""

    name = "hyperprior-gmm"
    config_type = HyperpriorConfig

    def build(self, config: HyperpriorConfig) -> HyperpriorGMM:
        return HyperpriorGMM(config)

    def parameters(self, model: HyperpriorGMM) -> list[torch.nn.Parameter]:
        # The bottleneck's quantiles only serve CompressAI's own coder; ours does not use them.
        return [p for n, p in model.named_parameters() if not n.endswith("quantiles")]

    def loss(
        self, model: HyperpriorGMM, x: torch.Tensor, rng: np.random.Generator, rate_weight: torch.Tensor | None = None
    ):
        quality = torch.from_numpy(rng.integers(0, model.config.levels, x.shape[0])).to(x.device)
        return rate_distortion_loss(model, x, quality, rate_weight)

    def decoder_loss(
        self, model: HyperpriorGMM, x: torch.Tensor, rng: np.random.Generator, rate_weight: torch.Tensor | None = None
    ):
        """The loss of a run that trains the decoder side only (--post-filter, --decoder-only).

        The encoder side is frozen, so the rate is fixed and only the
        distortion can move: `post_filter_objective`, whose gradient is that
        of the mean over the batch of ln(MSE), which weighs every quality
        alike in decibels. lambda x MSE would leave the low qualities, where
        the decoder has most to gain, little say (lambda spans a factor of
        800; with the MSE, the top level's gradient weighs about 40 times the
        lowest one's). Without a filter (a --decoder-only run of a model
        that has none) the logged value is 0; the gradient is the same.
        """
        quality = torch.from_numpy(rng.integers(0, model.config.levels, x.shape[0])).to(x.device)
        out = model(x, quality)
        pixels = x.shape[2] * x.shape[3]
        bpp = sum(-torch.log2(lk).flatten(1).sum(1) for lk in out["likelihoods"].values()) / pixels
        objective, mse = post_filter_objective(out["x_hat"], out["x_plain"], x)
        return objective, bpp.detach(), mse

    def entropy_loss(
        self, model: HyperpriorGMM, x: torch.Tensor, rng: np.random.Generator, rate_weight: torch.Tensor | None = None
    ):
        """The loss of an --entropy-only run: the bits of the rounded latent the coder really codes.

        The analysis, gains and hyper-analysis are frozen, so y and z are
        fixed and rounded exactly as the coder rounds them; only the
        hyper-synthesis (the mixture parameters) learns. The main run trains
        it on noisy latents and a noisy hyper-latent (the usual relaxation),
        which the coder never sees. The objective is the mean over the batch
        of ln(bits of y): every sample counts in percent, so the low
        qualities (a fiftieth of the top's bits) are not drowned. No pixel
        changes; the logged MSE is not computed (NaN), and the logged bpp is
        y's alone (z is coded with tables counted at export, not by h_s).
        """
        quality = torch.from_numpy(rng.integers(0, model.config.levels, x.shape[0])).to(x.device)
        with torch.no_grad():
            y, z = model.analyse(x, quality)
            y_int, z_int = torch.round(y), torch.round(z)
        weights, means, scales = model.mixture_parameters(z_int)
        bits = -torch.log2(mixture_likelihood(y_int, weights, means, scales)).flatten(1).sum(1)
        bpp = bits.detach() / (x.shape[2] * x.shape[3])
        return torch.log(bits).mean(), bpp, torch.full_like(bpp, float("nan"))

    def maintain(self, model: HyperpriorGMM, x: torch.Tensor, step: int, generator: torch.Generator) -> str:
        return ""

    @torch.no_grad()
    def evaluate(self, model: HyperpriorGMM, x: torch.Tensor) -> list[tuple[int, float, float]]:
        """(level, estimated bpp, PSNR) on the holdout crops, for every quality level."""
        rows = []
        for level in range(model.config.levels):
            out = model(x, torch.full((x.shape[0],), level, device=x.device))
            bits = sum(-torch.log2(lk).sum() for lk in out["likelihoods"].values())
            rows.append((level + 1, float(bits) / (x.shape[0] * x.shape[2] * x.shape[3]), _psnr(out["x_hat"], x)))
        return rows


USAGE_AS_COUNTS = 1e6  # a usage share times this weighs like the export's index counts


class VQArch:
    """vq: distortion plus commitment; each batch trains one point of the rate ladder (levels kept, codebook size).

    Codebooks are initialised by k-means on the first batch's residual
    targets and unused entries are restarted every RESTART_EVERY steps
    (not in a --decoder-only run, which keeps every key).
    """

    name = "vq"
    config_type = VQImageConfig
    distortion_weight = 0.01 * 255.0**2  # MSE (0..1 images) against the commitment loss
    # The latents of trained transforms are large (squared key distances of ~70 per element), so an
    # unweighted commitment loss outweighs the distortion ~6:1 and drags the encoder onto the
    # codebooks, losing 2 dB in the first 500 steps (session 2). Adam makes the keys' own updates
    # insensitive to this weight; what it sets is how hard the encoder is pulled. With
    # --freeze-transforms (how vq-mcq was trained) only the level-down convolutions feel it.
    commitment_weight = 0.1
    RESTART_EVERY = 200
    # Dead-entry threshold of the finest level (1/16), as a fraction of an even share 1/K: an
    # entry expected about twice in 24 photos of 768x512. Each coarser level has a quarter of the
    # positions, so an entry there needs four times the share to be used at all: 0.06 at 1/32,
    # 0.24 at 1/64 (session 7; before, 1e-3 everywhere left a fifth of the 1/64 entries unused).
    RESTART_THRESHOLD = 0.015

    def build(self, config: VQImageConfig) -> VQImageModel:
        return VQImageModel(config)

    def parameters(self, model: VQImageModel) -> list[torch.nn.Parameter]:
        return list(model.parameters())

    def _ladder_forward(self, model: VQImageModel, x: torch.Tensor, rng: np.random.Generator):
        """The model's output at a random point of the rate ladder, and that point's fixed-length bpp."""
        # Each batch trains one point of the codec's ladder, derived smaller codebooks included
        # (session 9: a decoder trained on full codebooks only gained half as much at those points).
        keep, entries = RATE_LADDER[int(rng.integers(len(RATE_LADDER)))]
        keep, entries = min(keep, model.config.levels), min(entries, model.config.entries)
        finest = None
        if entries < model.config.entries:
            q = model.quantisers[model.config.levels - keep]
            # Weighted by the running usage (shares summing to 1), scaled to count-like sizes: derive()
            # floors weights at 1e-3, meant for the export's counts, which would inflate rare entries.
            finest = q.derive(entries, q.usage * USAGE_AS_COUNTS)
        out = model(x, keep, finest)
        bpp = model.bits(x.shape[2], x.shape[3], keep, entries) / (x.shape[2] * x.shape[3])
        return out, torch.full((x.shape[0],), bpp, device=x.device)

    def loss(self, model: VQImageModel, x: torch.Tensor, rng: np.random.Generator, rate_weight=None):
        out, bpp = self._ladder_forward(model, x, rng)
        mse = (out.x_hat - x).pow(2).flatten(1).mean(1)
        return (self.distortion_weight * mse).mean() + self.commitment_weight * out.commitment, bpp, mse.detach()

    def decoder_loss(self, model: VQImageModel, x: torch.Tensor, rng: np.random.Generator, rate_weight=None):
        """A --post-filter run's loss: `post_filter_objective` at a random ladder point."""
        out, bpp = self._ladder_forward(model, x, rng)
        objective, mse = post_filter_objective(out.x_hat, out.x_plain, x)
        return objective, bpp, mse

    def maintain(self, model: VQImageModel, x: torch.Tensor, step: int, generator: torch.Generator) -> str:
        if not bool(model.quantisers[0].initialised):
            model.initialise_codebooks(x, generator)
            return "codebooks initialised by k-means"
        if step % self.RESTART_EVERY == 0:
            thresholds = [self.RESTART_THRESHOLD * 4**level for level in range(model.config.levels)]
            return f"restarted {model.restart_dead_entries(x, generator, thresholds)} dead entries"
        return ""

    @torch.no_grad()
    def evaluate(self, model: VQImageModel, x: torch.Tensor) -> list[tuple[int, float, float]]:
        """(levels kept, fixed-length bpp, PSNR) for every prefix of the levels."""
        rows = []
        for keep in range(1, model.config.levels + 1):
            bpp = model.bits(x.shape[2], x.shape[3], keep) / (x.shape[2] * x.shape[3])
            rows.append((keep, bpp, _psnr(model(x, keep).x_hat, x)))
        return rows


ARCHITECTURES = {a.name: a for a in (HyperpriorArch(), VQArch())}


def regain_levels(state: dict[str, torch.Tensor], old: tuple[float, ...], new: tuple[float, ...]) -> None:
    """Re-fit a hyperprior state dict's gain vectors from lambdas `old` to lambdas `new`, in place.

    Each new level's log-gains are interpolated linearly in log-lambda
    between the trained levels around it (extrapolated from the two end
    levels outside their range), so that a model trained on one set of rate
    points starts near the right place on another: the transforms are shared
    by all levels and carry over unchanged.
    """
    x_old = np.log(np.asarray(old, np.float64))
    for name in ("log_gain", "log_inverse_gain", "post.log_scale"):  # every per-level table (the filter's if any)
        if name not in state:
            continue
        shape = state[name].shape
        table = state[name].double().reshape(shape[0], -1).numpy()  # (levels, ...)
        rows = []
        for lam in np.log(np.asarray(new, np.float64)):
            i = int(np.clip(np.searchsorted(x_old, lam) - 1, 0, len(old) - 2))
            t = (lam - x_old[i]) / (x_old[i + 1] - x_old[i])
            rows.append((1 - t) * table[i] + t * table[i + 1])
        state[name] = torch.from_numpy(np.stack(rows)).to(state[name].dtype).reshape(len(new), *shape[1:])


def widen_latent(state: dict[str, torch.Tensor], old: HyperpriorConfig, new: HyperpriorConfig, seed: int = 0) -> None:
    """Grow a hyperprior state dict's latent from `old.latent_channels` to `new.latent_channels`, in place.

    Why: with M = 96 even the *unrounded* latent of the session-2 model
    decoded the evaluation photos to only 32.6 dB, so its high rate levels
    saturated however many bits they spent; more latent channels lift that
    ceiling. The trained model is kept (its function changes only a little)
    and the new channels start so that they can learn:
    - analysis: new random output filters, bias 0 (`train` then rescales
      them on real photos with `calibrate_new_channels`);
    - synthesis: new input filters small (a tenth of the default scale), not
      zero: with zero filters, rounding and the straight-through estimator
      would leave both sides of a new channel without gradient;
    - hyper-analysis: zero weights for the new inputs (z is unchanged);
    - hyper-synthesis: zero weights for the new mixture parameters, biases
      the mean over the old channels of each (parameter, component) group;
    - gains: each level's mean log-gain over the old channels.
    """
    m0, m1 = old.latent_channels, new.latent_channels
    k, grow = new.mixtures, new.latent_channels - old.latent_channels
    g = torch.Generator().manual_seed(seed)

    def uniform(shape: tuple[int, ...], fan_in: int, scale: float = 1.0) -> torch.Tensor:
        bound = scale / math.sqrt(fan_in)  # nn.Conv2d's default init, kaiming-uniform(a=sqrt(5))
        return (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1).mul_(bound)

    def cat(name: str, extra: torch.Tensor, dim: int) -> None:
        state[name] = torch.cat([state[name], extra.to(state[name].dtype)], dim=dim)

    w = state["g_a.6.weight"]  # (M, N, 5, 5)
    cat("g_a.6.weight", uniform((grow, *w.shape[1:]), w[0].numel()), 0)
    cat("g_a.6.bias", torch.zeros(grow), 0)
    w = state["g_s.0.weight"]  # transposed convolution: (M, N, 5, 5)
    cat("g_s.0.weight", uniform((grow, *w.shape[1:]), w.shape[1] * w.shape[2] * w.shape[3], 0.1), 0)
    w = state["h_a.0.weight"]  # (N, M, 3, 3)
    cat("h_a.0.weight", torch.zeros(w.shape[0], grow, *w.shape[2:]), 1)
    w, b = state["h_s.4.weight"], state["h_s.4.bias"]  # (3 K M, C, 3, 3): (parameter, component, channel)
    w = w.view(3, k, m0, *w.shape[1:])
    b = b.view(3, k, m0)
    w = torch.cat([w, w.new_zeros(3, k, grow, *w.shape[3:])], 2)
    b = torch.cat([b, b.mean(2, keepdim=True).expand(3, k, grow)], 2)
    state["h_s.4.weight"] = w.reshape(3 * k * m1, *w.shape[3:]).contiguous()
    state["h_s.4.bias"] = b.reshape(3 * k * m1).contiguous()
    for name in ("log_gain", "log_inverse_gain"):
        t = state[name]
        cat(name, t.mean(1, keepdim=True).expand(t.shape[0], grow), 1)


def _psnr(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    mse = (x_hat.clamp(0, 1) - x).pow(2).flatten(1).mean(1)
    return float((10 * torch.log10(1.0 / mse)).mean())


def rate_distortion_loss(
    model: HyperpriorGMM, x: torch.Tensor, quality: torch.Tensor, rate_weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean over the batch of lambda_q * 255^2 * MSE + bpp; also per-sample bpp and MSE.

    `rate_weight` (M,) weighs the latent channels' bits in the loss (the
    returned bpp stays the real one): new channels of a widened latent start
    near 0 (see `RateRamp`).
    """
    out = model(x, quality)
    pixels = x.shape[2] * x.shape[3]
    y_bits = -torch.log2(out["likelihoods"]["y"])
    z_bits = -torch.log2(out["likelihoods"]["z"]).flatten(1).sum(1)
    bpp = (y_bits.flatten(1).sum(1) + z_bits) / pixels
    paid = bpp if rate_weight is None else ((y_bits * rate_weight[:, None, None]).flatten(1).sum(1) + z_bits) / pixels
    mse = (out["x_hat"] - x).pow(2).flatten(1).mean(1)
    lambdas = torch.tensor(model.config.lambdas, dtype=x.dtype, device=x.device)[quality.long()]
    loss = (lambdas * 255.0**2 * mse + paid).mean()
    return loss, bpp.detach(), mse.detach()


@dataclasses.dataclass(frozen=True)
class RateRamp:
    """Rate warm-up for the channels a widening added (stored in the checkpoint).

    Measured (session 3): with their bits paid in full from the first step,
    the rate term silenced the new channels within 1,000 steps (2% nonzero at
    the top level, no effect on PSNR) before the synthesis learned to use
    them. So their bits weigh 0 at `start` and reach full weight linearly over
    `steps`: first the model learns what they can carry, then what they cost.
    """

    first_channel: int
    start: int
    steps: int

    def weights(self, step: int, channels: int) -> torch.Tensor:
        w = torch.ones(channels)
        w[self.first_channel :] = min(1.0, max(0.0, (step - self.start) / self.steps))
        return w


RATE_RAMP_STEPS = 3000


@torch.no_grad()
def calibrate_new_channels(model: HyperpriorGMM, x: torch.Tensor, first: int) -> None:
    """Scale the new analysis filters so that their outputs spread like the old channels' do.

    Random filters of the default scale gave outputs so small that rounding
    left them at zero (and rounded zeros carry neither information nor a
    gradient to the synthesis); matched to the median spread of the trained
    channels on a batch of photos, they round to real values at the top levels.
    """
    features = model.g_a[:-1](x)
    last = model.g_a[-1]
    spread = F.conv2d(features, last.weight, padding=last.padding, stride=last.stride).std(dim=(0, 2, 3))
    target = spread[:first].median()
    last.weight[first:] *= (target / spread[first:].clamp_min(1e-12))[:, None, None, None]


COMMITTED = Path(__file__).resolve().parents[1] / "weights" / "training"


def without_optimiser(state: dict) -> dict:
    """A checkpoint without Adam's moments (a third of the size), its tensors on the CPU."""
    return state | {"optimizer": None, "model": {k: v.cpu() for k, v in state["model"].items()}}


def commit_checkpoint(run_checkpoint: Path, arch: str) -> Path:
    """Copy a run's checkpoint to weights/training/ without its optimiser state.

    Adam's two moment buffers are twice the model's size (38 MB for the
    192-channel hyperprior, over the repository's 30 MB limit per file);
    without them the committed file is the model, step, schedule and random
    state, and a resumed run restarts Adam (mid-schedule this has worked
    without a warm-up, sessions 5 and 6; --new-schedule adds one).
    """
    state = torch.load(run_checkpoint, map_location="cpu", weights_only=False)
    out = COMMITTED / f"{arch}-checkpoint.pt"
    _atomic_save(without_optimiser(state), out)
    curve = run_checkpoint.parent / "curve.csv"
    if curve.exists():
        atomic_write(COMMITTED / f"{arch}-curve.csv", curve.read_bytes(), force=True)
    return out


def seed_from_committed(out_dir: Path, arch: str, log=print) -> None:
    """Start a new run folder from the committed checkpoint (and curve) of `arch`, if there is one.

    Training runs span sessions: each session ends by committing its last
    checkpoint under weights/training/, and the next one continues from it.
    """
    committed = COMMITTED / f"{arch}-checkpoint.pt"
    if (out_dir / "checkpoint.pt").exists():
        return
    if not committed.exists():
        log(
            f"no committed checkpoint for {arch} (looked for {committed}; an installed wheel has none: train from "
            "a checkout, installed with pip install -e .): a new model, from step 0"
        )
        return
    shutil.copyfile(committed, out_dir / "checkpoint.pt")
    curve = COMMITTED / f"{arch}-curve.csv"
    if curve.exists() and not (out_dir / "curve.csv").exists():
        shutil.copyfile(curve, out_dir / "curve.csv")
    log(f"continuing from the committed checkpoint {committed}")


def _load_checkpoint(path: Path, device: torch.device) -> dict:
    """A checkpoint or weights file, or one line saying why it cannot be one."""
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise TrainingError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict):
        raise TrainingError(f"{path}: not a checkpoint (a {type(state).__name__})")
    return state


def _atomic_save(obj: object, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue(), force=True)


CURVE_COLUMNS = ["minutes", "step", "level", "lambda", "bpp", "psnr", "device"]


def _upgrade_curve(path: Path, lambdas: tuple[float, ...]) -> None:
    """Add the lambda column to a learning curve written before levels could change (level -> `lambdas`)."""
    if not path.exists():
        return
    rows = list(csv.DictReader(path.open(newline="")))
    if rows and "lambda" in rows[0]:
        return
    for row in rows:
        row["lambda"] = lambdas[int(row["level"]) - 1] if lambdas else ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CURVE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, out.getvalue().encode(), force=True)


@dataclasses.dataclass
class TrainOptions:
    data_root: Path
    out_dir: Path
    steps: int = 60000  # horizon of the learning-rate schedule (and the stop)
    batch: int = 8
    crop: int = 128
    lr: float = 5e-4
    warmup: int = 500
    clip: float = 1.0
    seed: int = 0
    device: str = "cpu"
    threads: int = 0
    checkpoint_minutes: float = 5.0
    eval_every: int = 500
    max_minutes: float = 0.0  # 0: no wall-clock limit
    arch: str = "hyperprior-gmm"
    config: HyperpriorConfig | VQImageConfig | None = None  # None: the architecture's default
    new_schedule: bool = False  # resume the weights but restart warm-up + cosine from the current step
    init_from: Path | None = None  # a new run starts its transforms (g_a, g_s) from these weights
    freeze_transforms: bool = False  # train everything but g_a and g_s (e.g. VQ codebooks on trained transforms)
    freeze_level_maps: bool = False  # vq: keep the level-down/up maps too (their scale drifts against the codebooks)
    decoder_only: bool = False  # train only what rebuilds the image (vq: values, up maps, g_s, no restarts;
    # hyperprior: g_s, inverse gains and post-filter), so no file changes
    entropy_only: bool = False  # hyperprior: train only h_s, on the rounded latents the coder codes (no pixel changes)
    post_filter: bool = False  # train only the post-filter (adding one of POST_FILTER's shape if the model has none)
    latent_channels: int = 0  # hyperprior M (0: the config's); more than the checkpoint's widens it
    compile: bool = False  # torch.compile the training forward pass (about a minute to compile, then faster)
    mirror: Path | None = None  # also keep each checkpoint (without Adam's state) and the curve here ($OUT on a GPU)


def load_transforms(model: torch.nn.Module, weights: Path) -> int:
    """Copy the analysis/synthesis transforms of another model's weights (or checkpoint) into `model`.

    The VQ model shares the hyperprior model's transforms, so it can start
    from trained ones instead of random ones: on two cores that saves hours.
    Returns the number of tensors copied; shapes must match.
    """
    source = _load_checkpoint(weights, torch.device("cpu")).get("model")
    if not isinstance(source, dict):
        raise TrainingError(f"{weights}: no model state in it")
    own = model.state_dict()
    picked = {k: v for k, v in source.items() if k.split(".")[0] in ("g_a", "g_s") and k in own}
    wrong = [k for k, v in picked.items() if v.shape != own[k].shape]
    if not picked or wrong:
        raise TrainingError(f"{weights}: no transforms of this shape ({', '.join(wrong) or 'none found'})")
    model.load_state_dict(picked, strict=False)
    return len(picked)


# Shape (channels, convolutions) of a post-filter that --post-filter adds: chosen in session 10 for
# gain per decode millisecond (docs/history.md, hyperprior-gmm "Session 10").
POST_FILTER = (32, 3)


def check_options(opts: TrainOptions) -> None:
    """Refuse flags that do not fit together, before anything is read or written."""
    if opts.post_filter and (opts.freeze_transforms or opts.freeze_level_maps or opts.decoder_only):
        raise TrainingError("--post-filter trains the post-filter alone: drop the --freeze-.../--decoder-only flags")
    if opts.post_filter and opts.latent_channels:
        raise TrainingError("--post-filter trains the post-filter alone: drop --latent-channels")
    if opts.freeze_level_maps and opts.arch != "vq":
        raise TrainingError("--freeze-level-maps applies to the vq model only")
    if opts.latent_channels and opts.arch != "hyperprior-gmm":
        raise TrainingError("--latent-channels applies to the hyperprior-gmm model only")
    if opts.entropy_only and opts.arch != "hyperprior-gmm":
        raise TrainingError("--entropy-only applies to the hyperprior-gmm model only")
    if opts.entropy_only and (opts.post_filter or opts.decoder_only or opts.freeze_transforms or opts.latent_channels):
        raise TrainingError("--entropy-only trains the hyper-synthesis alone: drop the other training-mode flags")
    if opts.decoder_only and (opts.freeze_transforms or opts.freeze_level_maps):
        raise TrainingError("--decoder-only chooses the trained parts itself: drop the --freeze-... flags")
    if opts.crop < 64 or opts.crop % 64:
        raise TrainingError(f"--crop {opts.crop}: crops are whole multiples of 64 (the coarsest latents' grid)")
    torch_device(opts.device)  # an unknown device, or cuda without one: refused before anything is read


def train(opts: TrainOptions, log=print, progress=None) -> Path:
    """Train (or resume) and return the path of the last checkpoint.

    `log(message)` gets occasional lines; `progress(step, summary)` is called
    after every step (the CLI drives a progress bar with it).
    """
    check_options(opts)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = torch.device(opts.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the crops' shape never changes: let cuDNN pick its fastest kernels
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = opts.out_dir / "checkpoint.pt"
    torch.manual_seed(opts.seed)
    generator = torch.Generator().manual_seed(opts.seed)
    arch = ARCHITECTURES[opts.arch]
    state = _load_checkpoint(ckpt_path, device) if ckpt_path.exists() else None
    if state is not None and state.get("step", 0) >= opts.steps:  # before any change, photo or file
        log(f"already at step {state['step']}, not below --steps {opts.steps}: nothing to train (raise --steps)")
        return ckpt_path
    config = opts.config or arch.config_type()
    if state is None and opts.init_from:
        # A new run takes the widths of the transforms it starts from (e.g. a VQ run
        # from the shipped hyperprior, whose latent was widened to 192 channels).
        source = _load_checkpoint(opts.init_from, torch.device("cpu")).get("config") or {}
        widths = {k: source[k] for k in ("channels", "latent_channels") if k in source}
        config = dataclasses.replace(config, **widths)
    # A model with a post-filter keeps it; --post-filter gives one to a model that has none.
    saved_config = state["config"] if state else {}
    post = (config.post_filter_channels, config.post_filter_depth)  # a new run: what its config says
    if state:
        post = (saved_config.get("post_filter_channels", 0), saved_config.get("post_filter_depth", 3))
    post = POST_FILTER if opts.post_filter and not post[0] else post
    config = dataclasses.replace(config, post_filter_channels=post[0], post_filter_depth=post[1])
    if isinstance(config, HyperpriorConfig):
        # A widened run goes on at its width without repeating --latent-channels.
        saved_m = saved_config.get("latent_channels", 0)
        config = dataclasses.replace(
            config, latent_channels=opts.latent_channels or max(saved_m, config.latent_channels)
        )
    model = arch.build(config).to(device)
    params = arch.parameters(model)
    frozen_parts = ([model.g_a, model.g_s] if opts.freeze_transforms else []) + (
        [model.down, model.up] if opts.freeze_level_maps else []
    )
    frozen = [p for part in frozen_parts for p in part.parameters()]
    trained_alone = None  # runs that name what trains; everything else (all that decides a file's bytes) is frozen
    if opts.post_filter:
        trained_alone = list(model.post.parameters())
    elif opts.entropy_only:
        trained_alone = list(model.h_s.parameters())
    elif opts.decoder_only and opts.arch == "hyperprior-gmm":
        trained_alone = [
            *model.g_s.parameters(),
            model.log_inverse_gain,
            *(model.post.parameters() if model.post else []),
        ]
    elif opts.decoder_only:  # vq: what sets the keys and what is matched to them: g_a, down maps, keys
        frozen = [*model.g_a.parameters(), *model.down.parameters(), *(q.key_map for q in model.quantisers)]
    if trained_alone is not None:
        keep = {id(p) for p in trained_alone}
        frozen = [p for p in model.parameters() if id(p) not in keep]
    for p in frozen:
        p.requires_grad_(False)
    params = [p for p in params if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=opts.lr)
    step, minutes_before, schedule_start = 0, 0.0, 0
    rate_ramp: RateRamp | None = None
    widened_from = 0
    saved_lambdas: tuple[float, ...] = ()
    rng = np.random.default_rng(opts.seed)
    if state is not None:
        if state.get("arch", "hyperprior-gmm") != arch.name:
            raise TrainingError(f"{ckpt_path} was trained as another model: {state.get('arch')}")
        saved_lambdas = tuple(state["config"].get("lambdas", ()))
        saved = arch.config_type(**state["config"] | ({"lambdas": saved_lambdas} if saved_lambdas else {}))
        # Any model may gain a post-filter; a hyperprior may also move to another ladder of
        # rate levels and grow its latent. Any other change is another model.
        adds_post = not saved.post_filter_channels and config.post_filter_channels > 0
        grown = dataclasses.replace(
            saved, post_filter_channels=config.post_filter_channels, post_filter_depth=config.post_filter_depth
        )
        if isinstance(saved, HyperpriorConfig) and config.latent_channels >= saved.latent_channels:
            grown = dataclasses.replace(grown, lambdas=config.lambdas, latent_channels=config.latent_channels)
        reshaped = saved != config and grown == config
        if saved != config and not reshaped:
            raise TrainingError(f"{ckpt_path} was trained as another model: {state['config']}")
        if reshaped and getattr(saved, "lambdas", ()) != getattr(config, "lambdas", ()):
            regain_levels(state["model"], saved.lambdas, config.lambdas)
            log(f"rate levels changed from {len(saved.lambdas)} to {config.levels}: gains re-fitted, optimiser reset")
        if reshaped and isinstance(saved, HyperpriorConfig) and saved.latent_channels != config.latent_channels:
            widen_latent(state["model"], dataclasses.replace(saved, lambdas=config.lambdas), config, opts.seed)
            widened_from = saved.latent_channels
            log(f"latent widened from {saved.latent_channels} to {config.latent_channels} channels, optimiser reset")
        if adds_post and reshaped:
            # The new filter starts as the identity (PostFilter zero-initialises its last layer).
            state["model"] |= {k: v for k, v in model.state_dict().items() if k.startswith("post.")}
            log(f"post-filter added ({config.post_filter_channels} channels, {config.post_filter_depth} convolutions)")
        model.load_state_dict(state["model"])
        if not reshaped and state.get("optimizer") is None:
            log("the checkpoint has no optimiser state (a committed one): Adam starts afresh")
        elif not reshaped:
            try:
                optimizer.load_state_dict(state["optimizer"])
            except ValueError:  # another set of parameters trains now (--freeze-transforms on or off)
                log("the trained parameters changed: optimiser reset")
        step, minutes_before = state["step"], state["minutes"]
        rate_ramp = RateRamp(**state["rate_ramp"]) if state.get("rate_ramp") else None
        if widened_from:
            rate_ramp = RateRamp(widened_from, step, RATE_RAMP_STEPS)
        schedule_start = step if (opts.new_schedule or reshaped) else state.get("schedule_start", 0)
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"].cpu())  # map_location moved it to the device
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
        log(f"resumed from {ckpt_path} at step {step} ({minutes_before:.1f} min), schedule from step {schedule_start}")
        if opts.init_from:
            log(f"--init-from {opts.init_from} ignored: the run resumes from its checkpoint")
    elif opts.init_from:
        log(f"transforms from {opts.init_from}: {load_transforms(model, opts.init_from)} tensors")

    if opts.post_filter and state is None:
        raise TrainingError("--post-filter trains a filter for a trained model: resume a run or a committed one")
    if opts.entropy_only and state is None:
        raise TrainingError("--entropy-only fine-tunes a trained model: resume a run or start from a committed one")
    if opts.decoder_only and state is None:
        raise TrainingError("--decoder-only fine-tunes a trained model: resume a run or start from a committed one")
    if opts.decoder_only and opts.arch == "vq" and not bool(model.quantisers[0].initialised):
        raise TrainingError("--decoder-only fine-tunes a trained vq model: resume a run or start from a committed one")
    images = load_training_images(opts.data_root, opts.crop)
    if not images:
        raise TrainingError(f"no training photo under {opts.data_root} is {opts.crop} pixels on its short side")
    holdout = load_holdout(opts.data_root)
    if widened_from:
        calibrate_new_channels(
            model, random_batch(images, 8, opts.crop, np.random.default_rng(opts.seed)), widened_from
        )
    log(f"{len(images)} training images, {sum(p.numel() for p in model.parameters()):,} parameters, device {device}")
    curve_path = opts.out_dir / "curve.csv"
    _upgrade_curve(curve_path, saved_lambdas)
    new_curve = not curve_path.exists()
    curve = open(curve_path, "a", newline="")
    writer = csv.writer(curve)
    if new_curve:
        writer.writerow(CURVE_COLUMNS)
    lambdas = getattr(config, "lambdas", ())

    def save() -> None:
        state = {
            "arch": arch.name,
            "config": dataclasses.asdict(config),
            "model": {k: v.contiguous() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "step": step,
            "schedule_start": schedule_start,
            "rate_ramp": dataclasses.asdict(rate_ramp) if rate_ramp else None,
            "minutes": minutes_before + (time.time() - start) / 60,
            "numpy_rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,  # the noise is drawn there
        }
        _atomic_save(state, ckpt_path)
        if opts.mirror:
            opts.mirror.mkdir(parents=True, exist_ok=True)
            _atomic_save(without_optimiser(state), opts.mirror / "checkpoint.pt")
            curve.flush()
            atomic_write(opts.mirror / "curve.csv", curve_path.read_bytes(), force=True)

    stop = []  # SIGTERM / SIGINT: finish the step, write a checkpoint, return
    previous_handlers = {
        sig: signal.signal(sig, lambda *_: stop.append(True)) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    # Measured (session 4, batch 4 x 256^2, 2 threads): 447 ms a step; channels-last
    # (oneDNN's convolutions prefer NHWC) 387 ms; compiled as well 357 ms.
    model.to(memory_format=torch.channels_last)
    forward_model = torch.compile(model) if opts.compile else model
    # A hyperprior's decoder trains for every quality alike in dB; vq's decoder-only run keeps its own loss.
    decoder_run = opts.post_filter or (opts.decoder_only and opts.arch == "hyperprior-gmm")
    loss_of = arch.entropy_loss if opts.entropy_only else arch.decoder_loss if decoder_run else arch.loss
    start = last_save = time.time()
    running = None
    model.train()
    while step < opts.steps:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step - schedule_start, opts.lr, opts.warmup, opts.steps - schedule_start)
        x = random_batch(images, opts.batch, opts.crop, rng).to(device).contiguous(memory_format=torch.channels_last)
        # Restarts move keys; a decoder-only (or post-filter, or entropy-only) run keeps every index's key.
        partial = opts.decoder_only or opts.post_filter or opts.entropy_only
        note = "" if partial else arch.maintain(model, x, step, generator)
        if note:
            log(f"step {step}: {note}")
        if rate_ramp and step >= rate_ramp.start + rate_ramp.steps:
            rate_ramp = None  # every channel pays in full from here on
        rate_weight = rate_ramp.weights(step, config.latent_channels).to(device) if rate_ramp else None
        try:
            loss, bpp, mse = loss_of(forward_model, x, rng, rate_weight)
        except torch._dynamo.exc.TorchDynamoException as exc:  # compiling fails at the first call, e.g. no C++ compiler
            if forward_model is model:
                raise
            log(f"torch.compile failed ({type(exc).__name__}): training without it")
            forward_model = model
            loss, bpp, mse = loss_of(model, x, rng, rate_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, opts.clip)
        optimizer.step()
        step += 1
        stats = np.array([float(loss.detach()), float(bpp.mean()), float((10 * torch.log10(1 / mse)).mean())])
        running = stats if running is None else 0.98 * running + 0.02 * stats
        elapsed = (time.time() - start) / 60
        # An --entropy-only run decodes no pixels: no PSNR to show.
        summary = f"loss {running[0]:.3f} bpp {running[1]:.3f}" + (
            f" psnr {running[2]:.2f}" if np.isfinite(running[2]) else ""
        )
        if progress:
            progress(step, summary)
        if step % (500 if progress else 50) == 0:  # a bar does not show when stderr is not a terminal
            log(f"step {step} {summary} lr {optimizer.param_groups[0]['lr']:.2e} {minutes_before + elapsed:.1f} min")
        if step % opts.eval_every == 0 or step == opts.steps:
            model.eval()
            rows = arch.evaluate(model, holdout.to(device))
            model.train()
            for level, e_bpp, e_psnr in rows:
                lam = lambdas[level - 1] if lambdas else ""
                writer.writerow(
                    [f"{minutes_before + elapsed:.2f}", step, level, lam, f"{e_bpp:.4f}", f"{e_psnr:.3f}", device.type]
                )
            curve.flush()
        if time.time() - last_save > 60 * opts.checkpoint_minutes:
            save()
            last_save = time.time()
        if (opts.max_minutes and elapsed >= opts.max_minutes) or stop:
            break
    save()
    for sig, handler in previous_handlers.items():
        signal.signal(sig, handler)
    curve.close()
    log(f"checkpoint {ckpt_path} at step {step}")
    return ckpt_path


if __name__ == "__main__":  # python -m tools.train_image RUN_DIR [ARCH]: commit a run's checkpoint and curve
    import sys

    print(
        commit_checkpoint(Path(sys.argv[1]) / "checkpoint.pt", sys.argv[2] if len(sys.argv) > 2 else "hyperprior-gmm")
    )
