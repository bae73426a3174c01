"""The training loop, without Ray: one run of one configuration, reported every epoch.

    from ray_rthpo.config import load_config
    from ray_rthpo.training.trainer import run_training

    history = run_training(load_config("configs/digits.yaml"), report=lambda metrics, trainer: print(metrics))

:class:`Trainer` holds the whole state of a run (model, optimizer with eta, tangents, mu, step, data
order and RNG). ``trainer.save(path)`` at an epoch boundary and ``Trainer.load(...)`` continue the
run exactly as if it had not been interrupted (on CPU; CUDA kernels may not be bitwise deterministic).
"""

from __future__ import annotations

import io
import math
import os
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ray_rthpo import metrics as M
from ray_rthpo.config import ADOPTABLE_KEYS, Config, config_from_dict
from ray_rthpo.data import DataBundle, Split, augment_batch, load_data
from ray_rthpo.errors import ConfigError, RTHPOError
from ray_rthpo.factories import check_model_and_loss, resolve_loss, use_pythonpath, uses_user_code
from ray_rthpo.hypergrad.hvp import has_batchnorm
from ray_rthpo.models import build_model
from ray_rthpo.optim import ModelClosure
from ray_rthpo.report.files import atomic_write_bytes
from ray_rthpo.training.methods import (
    build_optimizer,
    move_scheduler,
    read_lr,
    refresh_batchnorm_stats,
    write_lr,
)

ReportFn = Callable[[dict[str, Any], "Trainer"], None]
#: 2: the hypergradient methods' state (tangents, moments, the hyper-update's state) is the optimizer's.
CHECKPOINT_VERSION = 2


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA if available else CPU; ``cuda`` without a GPU is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda', but no CUDA device is available; set train.device: "
                          "auto or cpu.")
    return torch.device(name)


def data_parallel_world() -> tuple[int, int] | None:
    """``(rank, size)`` of the initialised ``torch.distributed`` default group when it has more than one
    process (a Ray Train worker of a ``workers: N`` trial), else None: the Trainer runs as one process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return None


def head_size(n: int, fraction: float) -> int:
    """How many of ``n`` examples :meth:`ray_rthpo.optim.ModelClosure.head` keeps for ``fraction``."""
    return n if fraction >= 1.0 else max(min(n, 2), min(n, int(round(fraction * n))))


def shard_positions(n: int, size: int, rank: int, fraction: float = 1.0) -> torch.Tensor:
    """Positions, in a global batch of ``n`` examples, of rank ``rank``'s shard (of ``size``).

    The global batch's head (the first :func:`head_size` examples, which one process would use for the
    Hessian-vector product or the validation term at ``fraction`` < 1) is split across the ranks in order,
    then its tail: rank r's shard is its piece of the head followed by its piece of the tail, so that the
    ranks' shards together are the global batch, and the heads that RTHPO takes of them are, together, the
    global head (whenever the rounding of ``fraction`` agrees; :meth:`Trainer._check_data_parallel` warns
    otherwise). With ``fraction`` 1, rank r holds the r-th contiguous slice."""
    k = head_size(n, fraction)
    head = torch.tensor_split(torch.arange(k), size)[rank]
    tail = torch.tensor_split(torch.arange(k, n), size)[rank]
    return torch.cat([head, tail])


class ValidationSampler:
    """Cycles through the validation set in seeded random order, one minibatch at a time."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator = n, min(batch_size, n), generator
        self.order = torch.randperm(n, generator=generator)
        self.pos = 0

    def next_indices(self) -> torch.Tensor:
        """Indices of the next validation minibatch (a new permutation once the current one is used)."""
        if self.pos + self.batch_size > self.n:
            self.order = torch.randperm(self.n, generator=self.generator)
            self.pos = 0
        idx = self.order[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict[str, Any]:
        """Current permutation and position."""
        return {"order": self.order.clone(), "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.order, self.pos = state["order"].clone(), int(state["pos"])


class Trainer:
    """One training run: build data, model and learning-rate method from ``config``; run epochs.

    The data and the model are the built-in ones (``data.name``, ``model.name``) or the user's
    (``data.factory``, ``model.factory``: :mod:`ray_rthpo.factories`), imported after ``train.pythonpath``
    is put on ``sys.path``; every step minimises ``train.loss`` (default cross-entropy).
    """

    def __init__(self, config: Config, data: DataBundle | None = None) -> None:
        self.config = config
        self.device = resolve_device(config.train.device)
        self.dtype = torch.float64 if config.train.dtype == "float64" else torch.float32
        use_pythonpath(config.train.pythonpath)
        self.loss_fn = resolve_loss(config.train.loss)
        seed = config.train.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.data = data if data is not None else load_data(config.data, seed)
        self.model = build_model(config.model, self.data.input_shape, self.data.num_classes)
        self.model.to(device=self.device, dtype=self.dtype)
        if uses_user_code(config):  # a wrong output shape or loss fails here, with the key to fix
            n = min(4, len(self.data.train))
            check_model_and_loss(self.model, self.loss_fn,
                                 self._inputs(self.data.train.x[:n].to(self.device)),
                                 self.data.train.y[:n].to(self.device), self.data.num_classes, config)
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.train_x = self.data.train.x.to(self.device)
        self.train_y = self.data.train.y.to(self.device)
        self.val_x = self.data.val.x.to(self.device)
        self.val_y = self.data.val.y.to(self.device)
        n = len(self.data.train)
        bs = config.data.batch_size
        self.steps_per_epoch = max(1, n // bs) if n >= bs else 1
        #: The optimizer, its lr scheduler and DoG's averager (ray_rthpo/training/methods.py); run_epoch
        #: steps them itself.
        self.method = build_optimizer(self.model, config, self.steps_per_epoch)
        self.optimizer = self.method.optimizer
        self._steps = 0  # steps taken by an optimizer other than RTHPO (RTHPO counts its own)
        #: DoG: the training weights while the model holds the average (between evaluating and training).
        self._train_weights: dict[str, torch.Tensor] | None = None
        self.val_sampler = ValidationSampler(len(self.data.val), config.data.val_batch_size, self.generator)
        self.epoch = 0
        self.total_seconds = 0.0
        self.history: list[dict[str, Any]] = []
        self.status = M.STATUS_RUNNING
        #: {key: (checkpoint value, adopted value)} of the last :meth:`load_state_dict` (see ``adopt``).
        self.adopted: dict[str, tuple[Any, Any]] = {}
        #: (rank, size) under data parallelism (torch.distributed initialised, > 1 process), else None.
        self.world = data_parallel_world()
        if self.world is not None:
            self._check_data_parallel()

    @property
    def step_count(self) -> int:
        """Optimizer steps taken so far."""
        return self.optimizer.step_count if self.method.hypergradient else self._steps

    @property
    def done(self) -> bool:
        """True once all epochs ran or the run diverged."""
        return self.status != M.STATUS_RUNNING or self.epoch >= self.config.train.epochs

    # -- batches -----------------------------------------------------------------------------------
    def _inputs(self, x_raw: torch.Tensor) -> torch.Tensor:
        return self.data.normalize(x_raw, self.dtype)

    def _val_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.val_sampler.next_indices().to(self.device)
        if self.world is not None:  # this rank's shard of the global validation batch
            idx = idx[self._shard(len(idx), "val_batch_fraction")]
        return self._inputs(self.val_x[idx]), self.val_y[idx]

    # -- data parallelism (ray_rthpo/tune/train_workers.py; docs/distributed.md) ----------------------
    def _fraction(self, key: str) -> float:
        """The optimizer's ``hvp_batch_fraction`` / ``val_batch_fraction`` (1 for the other optimizers)."""
        return float(self.optimizer.param_groups[0].get(key, 1.0)) if self.method.hypergradient else 1.0

    def _shard(self, n: int, fraction_key: str) -> torch.Tensor:
        """Positions of this rank's shard in a global batch of ``n`` (see :func:`shard_positions`)."""
        assert self.world is not None
        rank, size = self.world
        return shard_positions(n, size, rank, self._fraction(fraction_key)).to(self.device)

    def _check_data_parallel(self) -> None:
        """Refuse what data parallelism cannot do exactly, naming the fix; warn when the hypergradient
        sub-batches cannot be the global ones."""
        assert self.world is not None
        rank, size = self.world
        cfg = self.config
        where = f"resources.workers is {size}"
        if has_batchnorm(self.model):
            raise ConfigError(f"{where}, but the model has BatchNorm, whose batch statistics would be each "
                              "worker's own: use a model without BatchNorm (GroupNorm, LayerNorm), or "
                              "resources.workers: 1.")
        batches = (("data.batch_size", min(cfg.data.batch_size, len(self.data.train)), "hvp_batch_fraction"),
                   ("data.val_batch_size", self.val_sampler.batch_size, "val_batch_fraction"))
        for key, n, fraction_key in batches:
            if n < size:
                raise ConfigError(f"{where}, but {key} is {n}: every worker needs at least one example of "
                                  f"each batch; raise {key} to at least {size} or use fewer workers.")
            fraction = self._fraction(fraction_key)
            k = head_size(n, fraction)
            pieces = [len(p) for p in torch.tensor_split(torch.arange(n), size)]
            heads = [len(p) for p in torch.tensor_split(torch.arange(k), size)]
            tails = torch.tensor_split(torch.arange(k, n), size)
            shards = [h + len(t) for h, t in zip(heads, tails, strict=True)]
            if rank == 0 and fraction < 1.0 and [head_size(m, fraction) for m in shards] != heads:
                import warnings

                warnings.warn(f"{where}: lr.{fraction_key} {fraction} of {key} {n} is {k} examples, which do "
                              f"not split as the workers' heads round ({pieces} per worker): the "
                              "hypergradient sub-batches differ from one process's (a valid estimate, not "
                              f"the same numbers). For equal numbers make {key} x {fraction} a multiple of "
                              f"{size}.",
                              stacklevel=2)

    def _average_gradients(self, loss: torch.Tensor, n: int) -> torch.Tensor:
        """Data parallelism for the optimizers other than RTHPO (which averages itself): every parameter's
        gradient and the loss become the global batch's (means weighted by the ranks' ``n``), in ONE
        all_reduce; returns the global loss."""
        from ray_rthpo.optim.distributed import Replicas, weighted_means

        assert self.world is not None
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        reps = Replicas(None, self.world[1], self.world[0])
        (means,) = weighted_means(reps, [(n, [loss.detach(), *(p.grad for p in params)])])
        for p, grad in zip(params, means[1:], strict=True):
            p.grad.copy_(grad)
        return means[0]

    def _all_sum(self, *values: float) -> list[float]:
        """``values`` summed over the ranks (one all_reduce, float64)."""
        import torch.distributed as dist

        buffer = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        return [float(v) for v in buffer]

    @torch.no_grad()
    def evaluate(self, split: Split) -> tuple[float, float]:
        """Mean loss (cross-entropy, or ``train.loss`` weighted by batch size) and accuracy of the model on a
        whole split (eval mode, no gradients)."""
        self._to_evaluated_weights()
        was_training = self.model.training
        self.model.eval()
        total_loss, correct, n = 0.0, 0, len(split)
        bs = self.config.data.eval_batch_size
        lo, hi = 0, n
        if self.world is not None:  # each rank evaluates its contiguous slice; the sums are all-reduced below
            piece = torch.tensor_split(torch.arange(n), self.world[1])[self.world[0]]
            lo, hi = (int(piece[0]), int(piece[-1]) + 1) if len(piece) else (0, 0)
        try:
            for start in range(lo, hi, bs):
                x = self._inputs(split.x[start:min(start + bs, hi)].to(self.device))
                y = split.y[start:min(start + bs, hi)].to(self.device)
                logits = self.model(x)
                if self.config.train.loss is None:
                    total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
                else:  # a user's loss is a batch mean
                    total_loss += float(self.loss_fn(logits, y)) * y.shape[0]
                correct += int((logits.argmax(1) == y).sum())
        finally:
            self.model.train(was_training)
        if self.world is not None:
            total_loss, summed = self._all_sum(total_loss, correct)
            correct = int(round(summed))
        return total_loss / max(1, n), correct / max(1, n)

    def _to_evaluated_weights(self) -> bool:
        """Schedule-Free: move the weights to the averaged point ``x``, with BatchNorm statistics re-estimated
        there on up to 50 fixed training batches; DoG: put its average in the model, keeping the training
        weights. Evaluations and checkpoints (written after an epoch) then hold those weights. Returns True
        when the weights moved (False when they already were there, and always for the other methods)."""
        if self.method.averager is not None:
            if self._train_weights is not None:
                return False
            self._train_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.model.load_state_dict(self.method.averager.averaged_model.state_dict())
            return True
        if not self.method.schedule_free or not self.optimizer.param_groups[0]["train_mode"]:
            return False
        self.optimizer.eval()  # type: ignore[attr-defined]
        if has_batchnorm(self.model):
            tb = self.config.data.batch_size
            refresh_batchnorm_stats(self.model, (self._inputs(self.train_x[i:i + tb])
                                                 for i in range(0, min(len(self.train_x), 50 * tb), tb)))
        return True

    def _to_training_weights(self) -> None:
        """Schedule-Free: back to the training point ``y``; DoG: the training weights in place of the average
        (before the steps of an epoch)."""
        if self.method.schedule_free:
            self.optimizer.train()  # type: ignore[attr-defined]
        if self._train_weights is not None:
            self.model.load_state_dict(self._train_weights)
            self._train_weights = None

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float,
                                                               float, bool]:
        """One optimizer step on ``(x, y)``: RTHPO's ``step`` with the closures (the validation batch is drawn
        only when the step computes a hypergradient), or a forward, backward and ``step()``, then the lr
        scheduler and DoG's averager. Returns the loss and logits (detached), the learning rate the step used,
        the seconds of hypergradient work, and whether the step diverged."""
        if self.method.hypergradient:
            closure = ModelClosure(self.model, self.loss_fn, x, y)
            self.optimizer.step(closure, val_closure=ModelClosure(self.model,
                                                                  self.loss_fn, batch=self._val_batch))
            info = self.optimizer.last_step
            assert info is not None and closure.output is not None
            return info.loss, closure.output, info.eta, info.hyper_seconds, info.diverged
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(x)
        loss = self.loss_fn(logits, y)
        loss.backward()
        if self.world is not None:  # the global batch's gradient and loss on every rank
            loss = self._average_gradients(loss, y.shape[0])
        self.optimizer.step()
        # after the step (Prodigy's d moves in it), before the schedule's next lr
        eta = read_lr(self.optimizer)
        if self.method.scheduler is not None:
            self.method.scheduler.step()
        if self.method.averager is not None:
            self.method.averager.step()
        self._steps += 1
        return loss.detach(), logits.detach(), eta, 0.0, False

    def _loss_ok(self, mean_loss: float) -> bool:
        return math.isfinite(mean_loss) and mean_loss <= self.config.train.diverge_loss

    # -- one epoch ---------------------------------------------------------------------------------
    def run_epoch(self) -> dict[str, Any]:
        """Train one epoch, evaluate on validation (and test), and return the epoch's metrics."""
        if self.done:
            raise RuntimeError(f"the run is already {self.status} after {self.epoch} epochs; nothing to run.")
        cfg = self.config
        self.model.train()
        self._to_training_weights()  # Schedule-Free, DoG: back to the training weights
        start = time.perf_counter()  # the three parts below add up to time/epoch_s
        hyper_s = 0.0
        n = len(self.data.train)
        bs = min(cfg.data.batch_size, n)
        order = torch.randperm(n, generator=self.generator).to(self.device)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = 0
        diverged = False
        # the learning rate of the epoch's last step (s * phi(t) on a schedule)
        last_eta = read_lr(self.optimizer)
        for b in range(self.steps_per_epoch):
            idx = order[b * bs:(b + 1) * bs]
            x_raw = self.train_x[idx]
            if cfg.data.augment:
                x_raw = augment_batch(x_raw, self.generator)
            counted = len(idx)  # the examples the step's loss averages over: the global batch's
            if self.world is not None:  # this rank's shard of the global minibatch (augmented as one process)
                mine = self._shard(len(idx), "hvp_batch_fraction")
                x_raw, idx = x_raw[mine], idx[mine]
            x, y = self._inputs(x_raw), self.train_y[idx]
            loss, logits, last_eta, seconds, step_diverged = self._step(x, y)
            hyper_s += seconds
            loss_sum += loss.double() * counted
            correct += (logits.argmax(1) == y).sum()
            seen += counted
            if step_diverged or not math.isfinite(last_eta):
                diverged = True
                break
            if b % 50 == 49 and not self._loss_ok(float(loss_sum) / seen):
                diverged = True
                break
        train_loss = float(loss_sum) / max(1, seen)
        if self.world is not None:  # every rank's correct predictions
            correct = torch.tensor(int(round(self._all_sum(float(correct))[0])))
        if not self._loss_ok(train_loss):
            diverged = True
        if not diverged and not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            diverged = True
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        eval_start = time.perf_counter()
        # time/train_s is the training loop without the hypergradient work (time/hyper_s: the HVP, the
        # validation term, the eta update and the tangent update), so train + hyper + eval = epoch.
        train_s = eval_start - start - hyper_s
        val_loss, val_acc = self.evaluate(self.data.val)
        test_loss, test_acc = self.evaluate(self.data.test) if cfg.train.eval_test else (math.nan, math.nan)
        end = time.perf_counter()
        eval_s = end - eval_start
        if not math.isfinite(val_loss):
            diverged = True
        epoch_s = end - start
        self.total_seconds += epoch_s
        self.epoch += 1
        if diverged:
            self.status = M.STATUS_DIVERGED
        elif self.epoch >= cfg.train.epochs:
            self.status = M.STATUS_FINISHED
        hypergrad = self.optimizer.last_hypergrad if self.method.hypergradient else 0.0
        result = {
            M.EPOCH: self.epoch,
            M.STEP: int(self.step_count),
            M.TRAIN_LOSS: _finite_loss(train_loss),
            M.TRAIN_ACC: float(correct) / max(1, seen),
            M.VAL_LOSS: _finite_loss(val_loss),
            M.VAL_ACC: val_acc,
            M.TEST_LOSS: _finite_loss(test_loss) if cfg.train.eval_test else None,
            M.TEST_ACC: test_acc if cfg.train.eval_test else None,
            M.VAL_N: len(self.data.val),
            M.TEST_N: len(self.data.test) if cfg.train.eval_test else None,
            M.LR: last_eta if math.isfinite(last_eta) else read_lr(self.optimizer),
            # The tuned value for RTHPO (the scale on a schedule); the last step's lr for the others.
            M.LR_SCALE: read_lr(self.optimizer) if self.method.hypergradient else last_eta,
            M.BETA: cfg.lr.beta if cfg.lr.is_hypergradient else 0.0,
            M.MU: self.optimizer.mu if self.method.hypergradient else 0.0,
            M.HYPERGRAD: hypergrad if math.isfinite(hypergrad) else 0.0,
            M.EPOCH_SECONDS: epoch_s,
            M.TOTAL_SECONDS: self.total_seconds,
            M.TRAIN_SECONDS: train_s,
            M.HYPER_SECONDS: hyper_s,
            M.EVAL_SECONDS: eval_s,
            M.DIVERGED: diverged,
            M.STATUS: self.status,
            M.DEVICE: str(self.device),
        }
        self.history.append(result)
        return result

    # -- checkpointing -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run exactly: model, optimizer (eta), tangents, RNGs, history."""
        return {
            "version": CHECKPOINT_VERSION,
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "status": self.status,
            "total_seconds": self.total_seconds,
            "history": list(self.history),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            # The method's state beyond the optimizer's (the key's name is older than this layout; kept so
            # that earlier checkpoints load): the step count and, for DoG, its averager and training weights.
            "stepper": self._method_state(),
            "generator": self.generator.get_state(),
            "val_sampler": self.val_sampler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "numpy_rng": np.random.get_state(),
            "python_rng": random.getstate(),
        }

    def load_state_dict(self, state: dict[str, Any], *,
                        adopt: Iterable[str] = ()) -> dict[str, tuple[Any, Any]]:
        """Restore a :meth:`state_dict`; the run's config must match (epochs may be extended).

        ``adopt``: flat config keys (a subset of :data:`ADOPTABLE_KEYS`, e.g. ``lr.eta0``) on which this
        trainer's config may differ from the checkpoint's: the weights, optimizer state, tangents and RNGs
        are the checkpoint's, and these values are this config's. This is how a population-based
        training exploit continues a better trial's model with a mutated learning rate: a new ``lr.eta0``
        becomes the current learning rate (written into the optimizer), a new ``lr.beta``/``lr.gamma``/...
        applies from the next step on. Returns ``{key: (checkpoint value, adopted value)}`` for the keys
        that differed (empty for an exact resume).
        """
        if state.get("version") != CHECKPOINT_VERSION:
            raise ConfigError(f"checkpoint version {state.get('version')!r} is not {CHECKPOINT_VERSION}; "
                              "it was written by another ray_rthpo release: start the run afresh.")
        adopt = tuple(adopt)
        unknown = sorted(set(adopt) - set(ADOPTABLE_KEYS))
        if unknown:
            raise ConfigError(f"adopt={unknown} holds keys a restored run cannot take over; "
                              f"adoptable keys are {', '.join(ADOPTABLE_KEYS)}.")
        saved_flat = config_from_dict(state["config"]).to_flat()
        own_flat = self.config.to_flat()
        ignored = {"train.epochs", "train.device", "train.pythonpath"}  # where the run is, not what it is
        if self.config.lr.schedule != "constant":  # the run's length is part of the schedule's shape
            ignored.discard("train.epochs")
        # (beta_horizon and tune_fraction keep the length they started with: total_steps is in the optimizer's
        # state, so an extended run goes on with the beta and the tuning period of its first length.)
        differ = sorted(k for k in set(saved_flat) | set(own_flat)
                        if k not in ignored and saved_flat.get(k) != own_flat.get(k))
        refused = [k for k in differ if k not in adopt]
        if refused:
            shown = ", ".join(f"{k} (checkpoint {saved_flat.get(k)!r}, now {own_flat.get(k)!r})"
                              for k in refused[:4])
            raise ConfigError(f"the checkpoint was written for a different configuration: {shown}; "
                              "resume with the config it was saved with, or start afresh in a new "
                              "output folder.")
        adopted = {k: (saved_flat.get(k), own_flat.get(k)) for k in differ}
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "lr.eta0" in adopted:
            write_lr(self.optimizer, float(self.config.lr.eta0))
        # The hypergradient methods keep beta, mu, eta_max and the clip in their param groups: the
        # checkpoint's values came back with them; adopted keys take this config's.
        for key, group_key in (("lr.beta", "beta"), ("lr.mu", "mu"), ("lr.eta_max", "eta_max"),
                               ("lr.hypergrad_clip", "hypergrad_clip")):
            if key in adopted and group_key in self.optimizer.param_groups[0]:
                if key == "lr.mu" and self.config.lr.method != "marthe":
                    continue
                for group in self.optimizer.param_groups:
                    group[group_key] = getattr(self.config.lr, group_key)
        self._load_method_state(state["stepper"])
        self.generator.set_state(state["generator"])
        self.val_sampler.load_state_dict(state["val_sampler"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])
        self.epoch = int(state["epoch"])
        self.total_seconds = float(state["total_seconds"])
        self.history = list(state["history"])
        self.status = state["status"]
        if self.status == M.STATUS_FINISHED and self.epoch < self.config.train.epochs:
            self.status = M.STATUS_RUNNING
        self.adopted = adopted
        return adopted

    def _method_state(self) -> dict[str, Any]:
        if self.method.hypergradient:
            return {}  # RTHPO's state_dict holds everything (eta, tangents, moments, its step count)
        out: dict[str, Any] = {"step": self._steps}
        if self.method.averager is not None:
            out["averager"] = self.method.averager.state_dict()
            out["train_weights"] = self._train_weights
        return out

    def _load_method_state(self, state: dict[str, Any]) -> None:
        if self.method.hypergradient:
            return
        self._steps = int(state["step"])
        if self.method.scheduler is not None:
            move_scheduler(self.method.scheduler, self._steps)
        if self.method.averager is not None:
            self.method.averager.load_state_dict(state["averager"])
            self._train_weights = state["train_weights"]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`state_dict` to ``path`` atomically (a temporary file, then a rename)."""
        buf = io.BytesIO()
        torch.save(self.state_dict(), buf)
        return atomic_write_bytes(path, buf.getvalue())

    def load(self, path: str | os.PathLike[str], *, adopt: Iterable[str] = ()) -> dict[str, tuple[Any, Any]]:
        """Restore the state saved by :meth:`save` at ``path`` (``adopt``: see :meth:`load_state_dict`).

        A missing, truncated or corrupt file, or one that is not a ray_rthpo checkpoint, raises
        :class:`~ray_rthpo.errors.RTHPOError` naming the file and the fix; nothing is changed then."""
        # RNG states must stay on the CPU; load_state_dict moves model/optimizer tensors to the device.
        fix = "delete it to start the run afresh (without --resume), or put back an intact copy"
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except FileNotFoundError:
            raise RTHPOError(f"checkpoint {str(path)!r} does not exist; start the run afresh "
                             "(without --resume), or give the output folder that holds it.") from None
        except PermissionError as err:
            raise RTHPOError(f"checkpoint {str(path)!r} cannot be read by this user "
                             f"({err.strerror}); fix its permissions, or run as the user "
                             "who wrote it.") from None
        # torch raises RuntimeError, EOFError, UnpicklingError, ... on a damaged file
        except Exception as err:
            why = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
            raise RTHPOError(f"checkpoint {str(path)!r} is truncated or corrupt "
                             f"({type(err).__name__}: {why}); {fix}.") from None
        if not isinstance(state, dict):
            missing = [f"everything: it holds a {type(state).__name__}"]
        else:  # another release's checkpoint: load_state_dict names its version
            current = state.get("version") == CHECKPOINT_VERSION
            missing = sorted(set(_CHECKPOINT_KEYS) - set(state)) if current else []
        if missing:
            raise RTHPOError(f"checkpoint {str(path)!r} is not a ray_rthpo checkpoint "
                             f"(missing {', '.join(missing)}); {fix}.")
        return self.load_state_dict(state, adopt=adopt)


#: What every checkpoint written by :meth:`Trainer.save` holds.
_CHECKPOINT_KEYS = ("version", "config", "epoch", "status", "total_seconds", "history", "model", "optimizer",
                    "stepper", "generator", "val_sampler", "torch_rng", "numpy_rng", "python_rng")


def _finite_loss(value: float) -> float:
    return value if math.isfinite(value) else M.DIVERGED_LOSS_PENALTY


def run_training(
    config: Config, report: ReportFn | None = None, *, data: DataBundle | None = None,
    resume_from: str | os.PathLike[str] | dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run ``config`` to the end (or divergence), calling ``report(metrics, trainer)`` every epoch.

    ``resume_from`` is a checkpoint path or state dict saved by :meth:`Trainer.save`; the run then
    continues from that epoch. Returns the per-epoch metrics, including the epochs before a resume.
    """
    trainer = Trainer(config, data=data)
    if isinstance(resume_from, dict):
        trainer.load_state_dict(resume_from)
    elif resume_from is not None:
        trainer.load(resume_from)
    while not trainer.done:
        result = trainer.run_epoch()
        if report is not None:
            report(result, trainer)
    return trainer.history
