"""The typed configuration of one training run: YAML -> frozen dataclasses -> Ray's flat dict, and back.

Every option lives here with a comment saying why. A YAML file is a short diff from these defaults::

    data: {name: mnist, data_dir: ../shared/data}
    model: {name: mlp}
    lr: {method: rthpo, eta0: 0.1, beta: 1.0e-4}
    train: {epochs: 5}

Load with :func:`load_config`; unknown keys, wrong types and out-of-range values raise
:class:`~ray_rthpo.errors.ConfigError` naming the key, the value and the fix.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from ray_rthpo.config_schema import check, check_choice, flatten, from_dict, merge, to_dict, unflatten
from ray_rthpo.errors import ConfigError
from ray_rthpo.hypergrad.hyper_updates import DEFAULT_BETA_SQRT, DEFAULT_HYPER_UPDATE
from ray_rthpo.optim import settings
from ray_rthpo.optim.schedules import SCHEDULES

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "fake")
MODELS = ("mlp", "lenet", "resnet18")
#: Learning-rate methods. The first four adapt eta online by a hypergradient (RTHPO's ``method``).
HYPERGRADIENT_METHODS = settings.METHODS
SCHEDULE_METHODS = ("fixed", "exp_decay", "cosine")
#: Optimizers that set their own step size. prodigy, schedule_free, dog and dadapt need the optional extra
#: lrfree (pip install -e '.[lrfree]'); they are checked when the run is built, not here.
OPTIMIZER_METHODS = ("adadelta", "prodigy", "schedule_free", "dog", "dadapt")
#: Methods whose lr (eta0, or a multiplier of their own step size) follows lr.schedule's shape when one is
#: set.
PEAK_SCHEDULED_METHODS = ("fixed", "prodigy", "dadapt")
METHODS = HYPERGRADIENT_METHODS + SCHEDULE_METHODS + OPTIMIZER_METHODS
HVP_MODES = settings.HVP_ROUTES
VAL_MODES = settings.VAL_MODES
#: lr.preset: which values the sub-sampling options take when a config leaves them at null.
PRESETS = ("exact", "fast", "cheap")
#: The values behind each preset (docs/performance.md measures the cost and accuracy of ``fast``).
#: ``fast``: the HVP on the first quarter of every 4th minibatch, the hypergradient every 4th step
#: on the first half of the validation minibatch: about 1.4x the cost of an SGD step on CPU. ``cheap``:
#: both every 10th step on a quarter of their batches (docs/performance.md, docs/horizon.md).
PRESET_VALUES: dict[str, dict[str, float | int]] = {
    "exact": {"hvp_every": 1, "hvp_batch_fraction": 1.0, "val_every": 1, "val_batch_fraction": 1.0},
    "fast": {"hvp_every": 4, "hvp_batch_fraction": 0.25, "val_every": 4, "val_batch_fraction": 0.5},
    "cheap": {"hvp_every": 10, "hvp_batch_fraction": 0.25, "val_every": 10, "val_batch_fraction": 0.25},
}
#: The fewest hypergradient steps a preset's period leaves in the tuning of a run (LRConfig.subsampling_for).
MIN_HYPER_UPDATES = 8
DEVICES = ("auto", "cpu", "cuda")
#: Base optimizers (optim.base).
BASES = settings.BASES
#: The lr.* / optim.* keys that are RTHPO's settings (ray_rthpo/optim/settings.py declares their ranges and
#: fixes once) whose run-config default differs from RTHPO's own, and why: a run config knows its length
#: and is tuned for cost (the cheap preset, docs/horizon.md); RTHPO alone keeps the exact, per-step maths.
RUN_DEFAULTS: dict[str, Any] = {
    "lr.eta0": 0.1,  # the paper's eta-bar for its MLP (RTHPO: the base optimizer's, 1e-3)
    "lr.beta": DEFAULT_BETA_SQRT[DEFAULT_HYPER_UPDATE],  # per sqrt(T) steps (RTHPO: the rule's default)
    "lr.beta_horizon": "sqrt",  # the run's length is known (RTHPO: per step)
    "lr.schedule": "constant",  # a name (RTHPO: None, the same flat shape)
    "lr.tune_fraction": 0.25,  # tuning over the first quarter, then plain steps (RTHPO: the whole run)
    "lr.backoff": 2.0,  # the loss-spike guard on (RTHPO: off)
    "lr.mu": 1.0,  # read only by marthe (RTHPO: None, required for marthe)
    "optim.weight_decay": 0.0,  # the same for both bases (RTHPO: the base optimizer's)
    "lr.backoff_rollback": None,  # the base optimizer's, as RTHPO's (the config's base is known later)
    # null: the value of lr.preset (RTHPO: every step, on the whole batch)
    "lr.hvp_every": None, "lr.hvp_batch_fraction": None, "lr.val_every": None, "lr.val_batch_fraction": None,
}


def run_default(key: str) -> Any:
    """The run config's default of ``key``, an RTHPO setting: :data:`RUN_DEFAULTS`, else RTHPO's own."""
    return RUN_DEFAULTS[key] if key in RUN_DEFAULTS else settings.default(settings.CONFIG_KEYS[key])


def check_settings(values: dict[str, Any]) -> None:
    """Raise ConfigError for the first of ``values`` (run-config key -> value; None values skipped: a null is
    the preset's or off) out of the range RTHPO declares (ray_rthpo/optim/settings.py), or for a broken
    rule between them, in the optimizer's words with the config's keys."""
    named = {settings.CONFIG_KEYS.get(key, key.split(".", 1)[1]): value for key, value in values.items()
             if value is not None}
    keys = {settings.CONFIG_KEYS.get(key, key.split(".", 1)[1]): key for key in values}

    def label(name: str) -> str:
        return keys.get(name) or next(k for k, n in settings.CONFIG_KEYS.items() if n == name)

    try:
        settings.check(named, label, prefix="")
    except settings.SettingError as exc:
        preset = " (or null: the value of lr.preset)" if exc.label in _PRESET_KEYS else ""
        raise ConfigError(f"{exc}{preset}") from None


#: The keys whose null means lr.preset's value.
_PRESET_KEYS = ("lr.hvp_every", "lr.hvp_batch_fraction", "lr.val_every", "lr.val_batch_fraction")
#: Run-config keys that only some methods read (searching them for another method wastes a budget).
KEYS_READ_ONLY_BY: dict[str, tuple[str, ...]] = {
    "lr.beta": HYPERGRADIENT_METHODS, "lr.mu": ("marthe",), "lr.hypergrad_clip": HYPERGRADIENT_METHODS,
    "lr.gamma": ("exp_decay",), "lr.eta_min": ("cosine",), "lr.beta_horizon": HYPERGRADIENT_METHODS,
    "lr.tune_fraction": HYPERGRADIENT_METHODS, "lr.backoff": HYPERGRADIENT_METHODS,
    "lr.backoff_rollback": HYPERGRADIENT_METHODS, "lr.hypergrad_at": HYPERGRADIENT_METHODS,
    "lr.average_window": HYPERGRADIENT_METHODS, "lr.agreement_gain": HYPERGRADIENT_METHODS,
    "lr.schedule": HYPERGRADIENT_METHODS + PEAK_SCHEDULED_METHODS,
    "lr.warmup": HYPERGRADIENT_METHODS + PEAK_SCHEDULED_METHODS,
}
#: Keys a restored run may take over from a new config (population-based training mutates them): the
#: learning-rate hyperparameters, never the method, model, data or seed.
ADOPTABLE_KEYS = ("lr.eta0", "lr.beta", "lr.gamma", "lr.mu", "lr.eta_min", "lr.eta_max", "lr.hypergrad_clip")


def method_reads(method: str, key: str) -> bool:
    """True when ``lr.method`` ``method`` reads the flat run-config key ``key`` (e.g. ``lr.beta``)."""
    return method in KEYS_READ_ONLY_BY.get(key, (method,))
DTYPES = ("float32", "float64")


#: A run-config key naming user code: ``package.module:attribute`` (``module:Class.method`` also works).
FACTORY_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def check_spec(key: str, value: str | None) -> None:
    """Raise ConfigError unless ``value`` is None or ``module:attribute``."""
    if value is not None and not (isinstance(value, str) and FACTORY_SPEC.match(value)):
        raise ConfigError(f"{key} must be 'module:function' (e.g. mypkg.models:build), but got {value!r}; "
                          "write the module's dotted import path, a colon, then the name in it.")


def check_args(key: str, args: Any, spec: str | None) -> None:
    """Raise ConfigError unless ``args`` is None or a mapping of names, set only beside a factory."""
    if args is None:
        return
    if not isinstance(args, dict) or not all(isinstance(k, str) and k.isidentifier() for k in args):
        raise ConfigError(f"{key} must be a mapping of keyword arguments (e.g. {{hidden: 64}}), but "
                          f"got {args!r}.")
    if spec is None:
        factory = key.rsplit("_", 1)[0]
        raise ConfigError(f"{key} is set ({args!r}) but {factory} is null; name the factory that takes them "
                          f"({factory}: module:function) or delete {key}.")


def _non_negative(name: str, value: float) -> None:
    check(math.isfinite(value) and value >= 0, f"{name} must be a finite number >= 0, but got {value!r}.")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, where it lives, and how it is split and batched."""

    # digits (sklearn, always offline), mnist, fashion_mnist, cifar10, cifar100, or fake (tests).
    name: str = "digits"
    # Folder holding the data (torchvision layout, MNIST IDX files, CIFAR-10 JPEG archives/ImageFolder).
    # null: ~/.cache/ray_rthpo/data. Relative paths are resolved against the current directory.
    data_dir: str | None = None
    # Let torchvision download the data when it is not in data_dir (needs internet).
    download: bool = False
    # Fraction of the *training* set held out as validation set: hypergradients and model selection
    # use it; the test set is only ever used to report final accuracy.
    val_fraction: float = 0.1
    # Minibatch size of the SGD steps.
    batch_size: int = 128
    # Minibatch size of the validation gradient in hypergradient methods.
    val_batch_size: int = 128
    # Batch size for full-set evaluation (no gradients): larger is faster.
    eval_batch_size: int = 1024
    # Random crop (pad 4) + horizontal flip for 32x32 colour images (CIFAR), off for the paper's setup.
    augment: bool = False
    # Use only the first N training examples (after the validation split); null = all. For quick runs.
    train_subset: int | None = None
    # Use only the first N examples of the (seeded, random) validation split / a fixed random sample of N
    # test examples, the same for every seed; null = all. For runs where evaluating the full sets would
    # cost more than training (ResNet-18 on a CPU).
    val_subset: int | None = None
    test_subset: int | None = None
    # Shape, classes and sizes of the synthetic 'fake' dataset (torchvision FakeData).
    fake_shape: tuple[int, ...] = (3, 32, 32)
    fake_classes: int = 10
    fake_train_size: int = 512
    fake_test_size: int = 128
    # Your own data instead of data.name: 'module:function', called as load(seed=train.seed, **factory_args)
    # and returning the train, validation and test splits (torch Datasets, DataLoaders or (x, y) tensor
    # pairs; validation may be null: carved from train with val_fraction). Read into memory once per run;
    # the inputs are used as given (no normalisation, no augment). See ray_rthpo/data/user.py.
    factory: str | None = None
    # Keyword arguments of data.factory (a mapping), e.g. {path: /data/table.csv}.
    factory_args: Any | None = None

    def __post_init__(self) -> None:
        check_choice("data.name", self.name, DATASETS)
        check_spec("data.factory", self.factory)
        check_args("data.factory_args", self.factory_args, self.factory)
        check(not (self.factory and self.augment),
              "data.augment is true, but it crops and flips (N, C, H, W) "
              "images of the built-in datasets only; with data.factory augment inside your data, and set "
              "data.augment: false.")
        check(0.0 < self.val_fraction < 1.0, "data.val_fraction must be in (0, 1), but got "
                                             f"{self.val_fraction!r}.")
        for key in ("batch_size", "val_batch_size", "eval_batch_size", "fake_classes", "fake_train_size",
                    "fake_test_size"):
            value = getattr(self, key)
            check(value >= 1, f"data.{key} must be an integer >= 1, but got {value!r}.")
        for key in ("train_subset", "val_subset", "test_subset"):
            value = getattr(self, key)
            check(value is None or value >= 1, f"data.{key} must be null or an integer >= 1, but got "
                                               f"{value!r}.")
        check(len(self.fake_shape) in (1, 3) and all(s >= 1 for s in self.fake_shape),
              "data.fake_shape must be [C, H, W] or [D] with positive sizes, but got "
              f"{list(self.fake_shape)!r}.")
        if self.fake_classes < 2:
            raise ConfigError(f"data.fake_classes must be >= 2, but got {self.fake_classes!r}.")


@dataclass(frozen=True)
class ModelConfig:
    """The network: the paper's MLP 784-512-256-10, LeNet-5, or the CIFAR ResNet-18."""

    name: str = "mlp"
    # Hidden layer widths of the MLP (the paper: 512, 256).
    hidden: tuple[int, ...] = (512, 256)
    # Your own network instead of model.name: 'module:function', called as
    # build(input_shape, num_classes, **factory_args) -> torch.nn.Module giving logits (N, num_classes).
    factory: str | None = None
    # Keyword arguments of model.factory (a mapping), e.g. {hidden: 64, depth: 2}.
    factory_args: Any | None = None

    def __post_init__(self) -> None:
        check_choice("model.name", self.name, MODELS)
        check_spec("model.factory", self.factory)
        check_args("model.factory_args", self.factory_args, self.factory)
        check(all(h >= 1 for h in self.hidden), "model.hidden must be positive widths, but got "
                                                f"{list(self.hidden)!r}.")


@dataclass(frozen=True)
class OptimConfig:
    """The base optimizer whose learning rate is tuned: SGD as in the paper, or AdamW."""

    # sgd (torch.optim.SGD) or adamw (torch.optim.AdamW), for the hypergradient methods (the tangent is
    # carried through either) and the schedules (fixed, exp_decay, cosine); schedule_free with adamw is
    # schedulefree.AdamWScheduleFree. adadelta and prodigy are their own optimizers: sgd only here.
    base: str = "sgd"
    # SGD: heavy-ball momentum (torch.optim.SGD, dampening 0). The paper uses 0. AdamW: must be 0 (betas).
    momentum: float = run_default("optim.momentum")
    # SGD: L2 weight decay added to the gradient, (1 - eta*lambda) in the tangent's Jacobian. AdamW:
    # decoupled weight decay, w <- (1 - eta*lambda) w (torch.optim.AdamW's default is 0.01).
    weight_decay: float = run_default("optim.weight_decay")
    # AdamW's moment decays (beta1, beta2) and epsilon, as torch.optim.AdamW.
    betas: tuple[float, ...] = run_default("optim.betas")
    eps: float = run_default("optim.eps")

    def __post_init__(self) -> None:
        # RTHPO's ranges and fixes (ray_rthpo/optim/settings.py), for every method over these bases.
        check_settings({f"optim.{key}": getattr(self, key) for key in ("base", "momentum", "weight_decay",
                                                                       "betas", "eps")})


class Subsampling(NamedTuple):
    """The sub-sampled hypergradient settings in effect (:attr:`LRConfig.subsampling`)."""

    hvp_every: int
    hvp_batch_fraction: float
    val_every: int
    val_batch_fraction: float


@dataclass(frozen=True)
class LRConfig:
    """How the learning rate is chosen: a hypergradient method, a fixed schedule, or a self-tuning
    optimizer."""

    # rthpo | marthe | hd_train | hd_val | fixed | exp_decay | cosine | adadelta | prodigy | schedule_free
    # prodigy: prodigyopt.Prodigy (Adam-like, adapts d; optim.momentum is not used). schedule_free:
    # schedulefree.SGDScheduleFree (momentum = optim.momentum, or the library's 0.9 when that is 0).
    # dog: dog.DoG (dog-optimizer; its defaults, reps_rel 1e-6), evaluated and checkpointed at its
    # PolynomialDecayAverager's average (gamma 8), as its authors recommend. dadapt: dadaptation's
    # DAdaptSGD (optim.momentum) or, with optim.base adamw, DAdaptAdam with decoupled weight decay.
    method: str = "rthpo"
    # Initial learning rate eta-bar (for AdaDelta and Prodigy: their lr multiplier, 1.0 in torch, the
    # paper and Prodigy's recommendation; for schedule_free: the SGD learning rate).
    eta0: float = run_default("lr.eta0")
    # Hyper-learning rate beta. With the scale-free rules (the default, multiplicative) beta is the
    # relative change of eta per sqrt(T) steps under lr.beta_horizon sqrt (the default: 1, docs/horizon.md),
    # or per step under lr.beta_horizon step (docs/beta.md: 0.1). With lr.hyper_update additive, the
    # paper's eq. (2): eta_{t+1} = eta_t - beta * h_t, whose scale differs by decades between models and
    # optimizers (docs/results.md): set beta and search it on a log scale (1e-4 is a value for the MNIST MLP).
    beta: float = run_default("lr.beta")
    # How eta moves given the hypergradient: multiplicative (the default: eta (1 - beta cos), the cosine of
    # grad E and z), additive (the paper's eq. 2), adam_log (Adam on log eta) or sign_log (sign of a
    # momentum on log eta). Equations: ray_rthpo/hypergrad/hyper_updates.py and the README.
    hyper_update: str = run_default("lr.hyper_update")
    # How beta scales with the run's length T: step (beta is the change per step, so its effect grows with
    # T) or sqrt (beta / sqrt(T) per step: the drift of a noisy hypergradient over the run does not grow
    # with T). T is train.epochs x steps per epoch. ray_rthpo/hypergrad/hyper_updates.py, docs/horizon.md.
    beta_horizon: str = run_default("lr.beta_horizon")
    # The learning rate's shape over the run, for the hypergradient methods and fixed: constant, or
    # warmup_cosine / warmup_linear (linear warmup over lr.warmup, then cosine / linear decay to 0 at
    # the run's end). With a shape, eta_t = s * phi(t): fixed uses s = eta0 (the peak), the hypergradient
    # methods tune s from eta0 by dE/ds (ray_rthpo/optim/schedules.py).
    schedule: str = run_default("lr.schedule")
    # The warmup of lr.schedule: a fraction of the run's steps (below 1) or a number of steps.
    warmup: float = run_default("lr.warmup")
    # The hypergradient methods tune over the first tune_fraction of the run's steps only; afterwards
    # the tuned value stays and each step costs what a plain step of the base optimizer costs.
    tune_fraction: float = run_default("lr.tune_fraction")
    # A guard against a learning rate above the stable range: while tuning, a step whose training loss
    # exceeds backoff x the running mean of the losses (and that mean by a quarter of the first loss)
    # halves the tuned value, at most once every 10 steps. null: off (ray_rthpo/optim/rthpo.py).
    backoff: float | None = run_default("lr.backoff")
    # With backoff: a spike also undoes the step that led to it (weights and optimizer state back to their
    # copy from before it, SGD's momentum restarted), and later losses are compared with the loss of the
    # point returned to. null: the base optimizer's default (ray_rthpo/optim/settings.py, BASE_DEFAULTS);
    # docs/method.md shows what it changes.
    backoff_rollback: bool | None = run_default("lr.backoff_rollback")
    # Where the hypergradient differentiates the validation loss: weights (the paper's RT-HPO, at the
    # current weights) or average (at a running average of the weights, exactly along the average of the
    # tangents; its time constant is lr.average_window x the run's steps). docs/method.md shows what it
    # changes.
    hypergrad_at: str = run_default("lr.hypergrad_at")
    average_window: float = run_default("lr.average_window")
    # With the multiplicative rule: a hypergradient agreeing in sign with the r - 1 before it moves the scale
    # min(r, agreement_gain) times as far; 1 is off (ray_rthpo/hypergrad/hyper_updates.py, docs/method.md).
    agreement_gain: float = run_default("lr.agreement_gain")
    # MARTHE's discount of the tangent: z_{t+1} = mu (I - eta H) z_t - g_t. 1 = RT-HPO, 0 = First-order (Val).
    mu: float = run_default("lr.mu")
    # eta is kept within [0, eta_max] after every hypergradient step.
    eta_max: float = run_default("lr.eta_max")
    # Clip the hypergradient h_t to [-c, c] (null: no clipping). The training gradient is never clipped.
    hypergrad_clip: float | None = run_default("lr.hypergrad_clip")
    # exp_decay: eta = eta0 * gamma ** epoch.
    gamma: float = 0.9
    # cosine: eta goes from eta0 to eta_min over the run.
    eta_min: float = 0.0
    # How the Hessian-vector product is computed: auto (a fixed rule per model and device, see
    # ray_rthpo.hypergrad.hvp.default_hvp_route; never a timing race, so runs reproduce),
    # double_backward, forward_over_reverse (refuses BatchNorm), or forward_over_reverse_bn (the
    # same with BatchNorm running statistics updated once outside torch.func).
    hvp: str = run_default("lr.hvp")
    # How grad E(w) . z is computed: backward (a validation gradient) or forward (a JVP of the
    # validation loss along z: one forward-mode pass, no backward). On CPU backward is never slower
    # (docs/performance.md), so it is the default.
    val_mode: str = run_default("lr.val_mode")
    # exact | fast. Sub-sampled hypergradients (the paper's proposal to close the cost gap): the
    # four options below, when left at null, take the preset's value (config.PRESET_VALUES);
    # a value set explicitly always wins over the preset. exact = 1, 1.0, 1, 1.0.
    preset: str = "cheap"
    # The HVP on this fraction of the minibatch (its first examples)...
    hvp_batch_fraction: float | None = run_default("lr.hvp_batch_fraction")
    # ... and only every k-th step (in between, the H z term of the tangent recursion is dropped).
    hvp_every: int | None = run_default("lr.hvp_every")
    # The hypergradient (validation term) only every k-th step; eta is unchanged in between and
    # moves by k * beta * h on a due step (h stands for the k steps), so beta keeps its per-step scale.
    val_every: int | None = run_default("lr.val_every")
    # The validation term on this fraction of the validation minibatch (its first examples).
    val_batch_fraction: float | None = run_default("lr.val_batch_fraction")

    def __post_init__(self) -> None:
        check_choice("lr.method", self.method, METHODS)
        # The keys that are RTHPO's settings: its ranges, fixes and rules (ray_rthpo/optim/settings.py), in
        # its words; the method joins them when it is RTHPO's (its rules with val_mode apply).
        values = {key: getattr(self, key.split(".", 1)[1]) for key in settings.CONFIG_KEYS
                  if key.startswith("lr.")}
        if self.is_hypergradient:
            values["lr.method"] = self.method
        check_settings(values)
        # The keys of the other methods and of the preset.
        check(0.0 < self.gamma <= 1.0, f"lr.gamma must be in (0, 1], but got {self.gamma!r}.")
        _non_negative("lr.eta_min", self.eta_min)
        check_choice("lr.preset", self.preset, PRESETS)
        check_choice("lr.schedule", self.schedule, SCHEDULES)

    @property
    def is_hypergradient(self) -> bool:
        """True for the methods that adapt eta online by a hypergradient."""
        return self.method in HYPERGRADIENT_METHODS

    @property
    def subsampling(self) -> Subsampling:
        """The sub-sampling options in effect: each explicit value, else the value of ``lr.preset``."""
        preset = PRESET_VALUES[self.preset]
        values = {key: preset[key] if getattr(self, key) is None else getattr(self, key) for key in preset}
        return Subsampling(hvp_every=int(values["hvp_every"]),
                           hvp_batch_fraction=float(values["hvp_batch_fraction"]),
                           val_every=int(values["val_every"]),
                           val_batch_fraction=float(values["val_batch_fraction"]))

    def subsampling_for(self, total_steps: int | None) -> Subsampling:
        """:attr:`subsampling` for a run of ``total_steps``: a period the preset sets (not an explicit
        ``lr.hvp_every`` / ``lr.val_every``) is cut so that the tuning (the first ``lr.tune_fraction`` of the
        steps) holds at least :data:`MIN_HYPER_UPDATES` hypergradient steps, down to every step."""
        sub = self.subsampling
        if total_steps is None:
            return sub
        tuning = math.ceil(self.tune_fraction * total_steps)
        cap = max(1, tuning // MIN_HYPER_UPDATES)
        return sub._replace(**{key: min(getattr(sub, key), cap) for key in ("hvp_every", "val_every")
                               if getattr(self, key) is None})


@dataclass(frozen=True)
class TrainConfig:
    """Length of the run, seed, device and precision."""

    epochs: int = 10
    seed: int = 0
    # auto: CUDA when available, else CPU.
    device: str = "auto"
    # float64 is for checks of the maths; float32 for training.
    dtype: str = "float32"
    # Evaluate validation and test sets every epoch (test accuracy is reported, never used to choose).
    eval_test: bool = True
    # A mean training loss above this (or a NaN/inf one) ends the run as 'diverged'. Chance level
    # of cross-entropy is ln(classes), about 2.3 for 10 classes.
    diverge_loss: float = 1.0e4
    # Tune trials write a checkpoint after an epoch once this many compute seconds have passed since the
    # last one, and always after the last epoch; 0 = after every epoch. A crashed trial redoes at most this
    # much compute (or the epoch in flight). Tiny epochs (digits: ~0.1 s) checkpointed every epoch spend
    # a fifth of their time writing checkpoints (docs/performance.md). Population-based training always
    # checkpoints every epoch (its exploits clone the latest checkpoint).
    checkpoint_every_s: float = 0.0
    # The training (and validation) loss: 'module:function', loss(output, target) -> scalar tensor (the
    # batch mean), or a torch.nn.Module class such as torch.nn:CrossEntropyLoss. null: cross-entropy.
    # Validation accuracy stays the selection metric: the model must output class logits.
    loss: str | None = None
    # Folders put in front of sys.path before model.factory, data.factory and train.loss are imported, in
    # this process and in every Ray trial. rthpo train/run/compare add the current directory and the config
    # file's folder (absolute) when the config names user code.
    pythonpath: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check(self.epochs >= 1, f"train.epochs must be an integer >= 1, but got {self.epochs!r}.")
        check_spec("train.loss", self.loss)
        check(all(isinstance(p, str) and p for p in self.pythonpath),
              f"train.pythonpath must be a list of folders, but got {list(self.pythonpath)!r}.")
        check(self.seed >= 0, f"train.seed must be an integer >= 0, but got {self.seed!r}.")
        check_choice("train.device", self.device, DEVICES)
        check_choice("train.dtype", self.dtype, DTYPES)
        check(self.diverge_loss > 0, f"train.diverge_loss must be > 0, but got {self.diverge_loss!r}.")
        check(math.isfinite(self.checkpoint_every_s) and self.checkpoint_every_s >= 0,
              f"train.checkpoint_every_s must be a number of seconds >= 0 (0: every epoch), but got "
              f"{self.checkpoint_every_s!r}.")


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment tracking: every run's (every trial's) parameters and per-epoch metrics, logged to MLflow.

    Off unless ``tracking.mlflow`` is set; docs/tracking.md says what is logged and how to read it back."""

    # An MLflow tracking URI: a folder (mlruns, /abs/mlruns or file:///abs/mlruns: MLflow's file store, which
    # rthpo allows for its own process, MLFLOW_ALLOW_FILE_STORE=true), http(s)://host:5000 (a tracking
    # server), or sqlite:///mlflow.db (needs sqlalchemy and alembic: pip install mlflow). null: no tracking.
    # Needs the extra tracking (pip install mlflow-skinny). A string (typed Any: checked below, with the fix).
    mlflow: Any | None = None
    # The MLflow experiment the runs are logged to (created when missing). null: the config file's name
    # (rthpo train) or the experiment's name (rthpo compare / run). A string.
    experiment: Any | None = None

    def __post_init__(self) -> None:
        check(self.mlflow is None or (isinstance(self.mlflow, str) and bool(self.mlflow.strip())),
              f"tracking.mlflow must be an MLflow tracking URI, a string such as file:///abs/mlruns, a "
              f"folder or http://host:5000, but got {self.mlflow!r}; write one (quoted if YAML reads it "
              "otherwise), or delete the key to log nothing.")
        check(self.experiment is None or (isinstance(self.experiment, str) and bool(self.experiment.strip())),
              f"tracking.experiment must be an MLflow experiment name (a string), but got "
              f"{self.experiment!r}; name one, or delete the key (the config's name is used).")
        check(self.experiment is None or self.mlflow is not None,
              f"tracking.experiment is {self.experiment!r} but tracking.mlflow is null, so nothing is "
              "logged; set tracking.mlflow to a tracking URI (e.g. file:///abs/mlruns), or delete "
              "tracking.experiment.")
        if self.mlflow is not None:
            from ray_rthpo.uris import check_mlflow

            check_mlflow(self.mlflow)

    @property
    def enabled(self) -> bool:
        """True when runs are logged (``tracking.mlflow`` is set)."""
        return self.mlflow is not None


@dataclass(frozen=True)
class Config:
    """One training run: data, model, inner optimizer, learning-rate method, and run settings."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lr: LRConfig = field(default_factory=LRConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Where every run's parameters and per-epoch metrics are logged (MLflow); off by default.
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict, ready for YAML/JSON (the resolved config kept beside results)."""
        return to_dict(self)

    def to_flat(self) -> dict[str, Any]:
        """Flat ``{"lr.beta": ..., "data.name": ...}`` dict: the form Ray Tune passes to a trainable."""
        return flatten(self.to_dict())

    def replace(self, **flat_overrides: Any) -> Config:
        """A copy with dotted-key overrides applied, e.g. ``cfg.replace(**{"lr.beta": 1e-3})``."""
        return config_from_dict(merge(self.to_dict(), unflatten(flat_overrides)))


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a :class:`Config` from a nested (YAML) or flat (Ray) dict; strict about keys and types."""
    if any("." in str(k) for k in data):
        data = unflatten(data)
    return from_dict(Config, data)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path`` with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass the path of a YAML file.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}".replace("\n", " ")) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, but holds "
                          f"{type(data).__name__}.")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``--set key=value`` override; the value is read as YAML (``1.0e-3``, ``true``,
    ``[1, 2]``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value (e.g. lr.eta0=0.05), but got {text!r}.")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a run config: defaults, then the YAML file at ``path``, then ``--set key=value`` overrides."""
    data = load_yaml(path) if path is not None else {}
    for text in overrides or []:
        key, value = parse_override(text)
        data = merge(data, unflatten({key: value}))
    return config_from_dict(data)


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (kept with the results of a run)."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


__all__ = [
    "Config", "DataConfig", "ModelConfig", "OptimConfig", "LRConfig", "TrainConfig", "TrackingConfig",
    "config_from_dict", "load_config", "load_yaml", "save_config", "parse_override",
    "DATASETS", "MODELS", "METHODS", "HYPERGRADIENT_METHODS", "PRESETS", "PRESET_VALUES", "Subsampling",
    "KEYS_READ_ONLY_BY", "ADOPTABLE_KEYS", "method_reads", "FACTORY_SPEC", "check_spec", "check_args",
]
