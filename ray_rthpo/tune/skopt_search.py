"""A scikit-optimize (Bayesian optimisation) searcher for Ray Tune.

Ray removed its own ``SkOptSearch`` in 2024 (ray-project/ray#43969); this small replacement wraps
``skopt.Optimizer.ask``/``tell`` in :class:`ray.tune.search.Searcher`. Call order (Ray makes these
calls, with the space from ``Tuner(param_space=...)`` and metric/mode from ``TuneConfig``)::

    searcher = SkOptSearch({"lr.eta0": tune.loguniform(1e-4, 1.0)}, metric="val/acc", mode="max", seed=0)
    config = searcher.suggest("trial_1")            # {"lr.eta0": 0.0123}
    searcher.on_trial_complete("trial_1", {"val/acc": 0.91})

The space is flat, as :func:`ray_rthpo.tune.searchers.to_domain` makes it: dotted keys ->
``tune.loguniform``/``uniform``/``randint``/``choice``; other values are constants, passed unchanged.
While trials run, the next point is asked from a copy of the optimizer told the running points with
the best value so far ("constant liar"), so a running point is not proposed again.

Fitting the surrogate takes a quarter of a second per fit (a GP on 20 points, two fits per trial with
the liar), and Tune calls a searcher inside its one event loop: every running trial waits at its next
report meanwhile, and on a busy machine the fits alone cost a comparison of short trials seconds of
wall time (docs/performance.md). With ``background=True`` (what the comparison runners use) the fits
run in a thread while the trials run: right after each suggestion the thread tells the optimizer the
results that came in and prepares the point for the NEXT suggestion, away from the running trials
(constant liar), so :meth:`SkOptSearch.suggest` answers at once. That point is asked when the previous
suggestion was made: a result that arrives later (a trial running then, told to it as the best value
so far) informs the point after it. This is asynchronous Bayesian optimisation; the synchronous mode
(``background=False``, the default of the class) tells each result before the next point is asked, and
with one trial at a time it proposes exactly skopt's own ask/tell sequence.
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
import os
import pickle
import threading
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from ray.tune.search import Searcher
from ray.tune.search import sample as ray_sample

from ray_rthpo.config_schema import check
from ray_rthpo.errors import ConfigError
from ray_rthpo.experiment.searchers import SKOPT_ESTIMATORS
from ray_rthpo.report.files import atomic_write_bytes
from ray_rthpo.tune.results import lookup as _lookup

try:
    import skopt
    from skopt.space import Categorical, Integer, Real
except ImportError:  # pragma: no cover - exercised only where scikit-optimize is missing
    skopt = None

logger = logging.getLogger(__name__)

__all__ = ["SkOptSearch", "BASE_ESTIMATORS", "ACQ_FUNCS"]

#: skopt surrogates that run unpatched on scikit-optimize 0.10 / scikit-learn 1.9 / numpy 2.4
#: (skopt's "GBRT" is no regressor for scikit-learn >= 1.6; "DUMMY" crashes in is_regressor(None)).
BASE_ESTIMATORS = SKOPT_ESTIMATORS
#: skopt's "EIps"/"PIps" need the run time as a second objective, so they are refused.
ACQ_FUNCS = ("gp_hedge", "EI", "PI", "LCB")
_STATE_VERSION = 2
#: Attributes (less their leading "_") that get_state saves and set_state loads.
_STATE_KEYS = ("metric", "mode", "seed", "base_estimator", "n_initial_points", "acq_func", "penalty",
               "max_concurrent", "dims", "constants", "optimizer", "live", "done", "untold")


class SkOptSearch(Searcher):
    """Bayesian optimisation with scikit-optimize behind Ray Tune's ``Searcher`` interface.

    Args:
        space: Flat ``{"lr.eta0": tune.loguniform(1e-4, 1.0), "epochs": 5}``; non-domain values are
            constants. None: taken from ``Tuner(param_space=...)``.
        metric, mode: The metric to optimise and ``"min"``/``"max"``; may come from ``TuneConfig``.
        seed: ``skopt.Optimizer(random_state=seed)``: same seed and history, same suggestions.
        base_estimator, acq_func: skopt's surrogate (:data:`BASE_ESTIMATORS`) and acquisition
            function (:data:`ACQ_FUNCS`).
        n_initial_points: Random points told before the surrogate is used (>= 1).
        max_concurrent: At most this many live trials (:meth:`suggest` returns None beyond); None: no
            limit. ``TuneConfig(max_concurrent_trials=...)`` sets it through :meth:`set_max_concurrency`.
        penalty: None: drop a failed trial (errored, or metric missing, NaN or infinite). A number:
            tell it as this metric value (the metric's units and direction, of the order of the worst
            real values). A trial ended without result or error (Ray removing a trial that never
            ran) is always dropped.
        background: Fit the surrogate in a thread (see the module doc); :meth:`suggest` answers with the
            point the thread prepared, waiting only when none is ready. False: every call does its work
            before returning.

    Raises:
        ImportError: scikit-optimize is not installed.
        ConfigError: a bad option or search space entry; the message names it, its value and the fix.
    """

    def __init__(self, space: Mapping[str, Any] | None = None, metric: str | None = None,
                 mode: str | None = None, *, seed: int | None = None, base_estimator: str = "GP",
                 n_initial_points: int = 5, acq_func: str = "gp_hedge",
                 max_concurrent: int | None = None, penalty: float | None = None,
                 background: bool = False) -> None:
        if skopt is None:
            raise ImportError("SkOptSearch needs scikit-optimize, which is not installed. "
                              "Fix: pip install scikit-optimize.")
        _check_metric_mode(metric, mode)
        check(seed is None or (_is_int(seed, 0) and seed < 2**32),
              f"seed must be None or an int in [0, 2**32), but got {seed!r}.")
        check(base_estimator in BASE_ESTIMATORS, f"base_estimator must be one of {BASE_ESTIMATORS}, but got "
              f"{base_estimator!r} (skopt's GBRT and DUMMY do not run on current scikit-learn/numpy).")
        check(_is_int(n_initial_points, 1),
              f"n_initial_points must be an int >= 1, but got {n_initial_points!r}.")
        check(acq_func in ACQ_FUNCS, f"acq_func must be one of {ACQ_FUNCS}, but got {acq_func!r}.")
        _check_max_concurrent(max_concurrent)
        check(penalty is None or _is_finite(penalty),
              f"penalty must be None (drop failed trials) or a finite number, but got {penalty!r}.")
        check(space is None or isinstance(space, Mapping),
              f"space must be a dict of parameter name -> domain, but got {type(space).__name__}: {space!r}.")
        super().__init__(metric=metric, mode=mode)
        self._seed = None if seed is None else int(seed)
        self._base_estimator, self._acq_func = base_estimator, acq_func
        self._n_initial_points = n_initial_points
        self._penalty = None if penalty is None else float(penalty)
        self._max_concurrent = max_concurrent
        self._dims: list[Any] = []  # skopt dimensions, each named after its config key
        self._constants: dict[str, Any] = {}
        self._optimizer: Any = None
        self._live: dict[str, list[Any]] = {}  # trial id -> point (optimizer coordinates)
        self._done: set[str] = set()  # trial ids already completed
        # (point, objective) of completed trials not yet told to the optimizer (background: the thread tells)
        self._untold: list[tuple[list[Any], float]] = []
        self._background = bool(background)
        self._suggested = 0  # suggestions made so far: a background point is for the next one
        # (suggestions made, point, optimizer it was asked from, that optimizer after the ask): the thread's
        self._ready: tuple[int, list[Any], Any, Any] | None = None
        self._worker: threading.Thread | None = None
        self._generation = 0  # set_state bumps it: a thread started before must not install its result
        self._lock = threading.RLock()
        if space is not None:
            self._install(space)

    def _install(self, space: Mapping[str, Any]) -> None:
        """Convert ``space`` and build the optimizer."""
        dims, constants = _parse_space(space)
        check(bool(dims), f"space must contain at least one searched parameter, but got only constants "
                          f"{dict(space)!r}. Fix: use Ray Tune domains (tune.loguniform, ...) as values.")
        self._dims, self._constants = dims, constants
        self._optimizer = skopt.Optimizer(
            dimensions=dims, base_estimator=self._base_estimator, n_initial_points=self._n_initial_points,
            acq_func=self._acq_func, random_state=self._seed,
            model_queue_size=1)  # keep only the latest surrogate: checkpoints stay small

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict[str, Any],
                              **spec: Any) -> bool:
        """Take metric, mode and (unless given a space) the search space from Tune.

        With a space of its own, ``config`` may hold constants only (they reach trials through Ray).
        Returns False when there is no space anywhere, True otherwise.
        """
        with self._lock:
            _check_metric_mode(metric, mode)
            searched = [key for key, value in config.items() if _hides_domain(value)]
            check(self._optimizer is None or not searched,
                  f"SkOptSearch already has a search space, but param_space searches {searched} too. Fix: "
                  "define the search space in one place, SkOptSearch(space=...) or Tuner(param_space=...).")
            if self._optimizer is None and not searched:
                return False
            for label, value in (("metric", metric), ("mode", mode)):
                current = getattr(self, "_" + label)
                check(value is None or current is None or current == value,
                      f"{label} was given twice with different values: SkOptSearch({label}={current!r}) and "
                      f"TuneConfig({label}={value!r}). Fix: give it in one place only.")
                if value is not None:
                    setattr(self, "_" + label, value)
            if self._optimizer is None:
                self._install(config)
            return True

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """Called by Ray's ConcurrencyLimiter (``TuneConfig(max_concurrent_trials=...)``): handled here."""
        _check_max_concurrent(max_concurrent)
        self._max_concurrent = max_concurrent
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """The next config, or None while ``max_concurrent`` trials are live (Tune asks again). Background:
        the point the thread prepared, waiting for the thread when it has none ready yet."""
        with self._lock:
            if self._optimizer is None:
                raise RuntimeError("SkOptSearch has no search space. Fix: pass space= to SkOptSearch, or put "
                                   "Ray Tune domains (tune.loguniform, ...) in Tuner(param_space=...).")
            if not self._metric or not self._mode:
                raise RuntimeError(f"SkOptSearch needs metric and mode, but got metric={self._metric!r}, "
                                   f"mode={self._mode!r}. Fix: pass them to SkOptSearch or to TuneConfig.")
            if trial_id in self._live:  # asked twice for the same trial: same answer
                return self._to_config(self._live[trial_id])
            if self._max_concurrent is not None and len(self._live) >= self._max_concurrent:
                return None
            if self._background:
                point = self._background_point()
            else:
                self._tell_queued(self._optimizer)  # results queued by a state saved in background mode
                point = _ask(self._optimizer, list(self._live.values()))
            self._live[trial_id] = point
            self._suggested += 1
            if self._background:
                self._start_fit()  # the point after this one, while the trials run
            return self._to_config(point)

    def _background_point(self) -> list[Any]:
        """The point the thread prepared for this suggestion; waits for the thread when it has none yet."""
        self._wait_for_thread(self._ready_now)
        assert self._ready is not None
        point, self._optimizer = self._ready[1], self._ready[3]  # the optimizer as its ask left it
        self._ready = None
        return point

    def _wait_for_thread(self, done: Callable[[], bool], timeout_s: float | None = None) -> None:
        """Run the thread until ``done()`` (called with the lock held once, which is released while waiting:
        the thread takes it to read and to install). Raises TimeoutError after ``timeout_s`` per fit."""
        while not done():
            self._start_fit()
            worker = self._worker
            assert worker is not None
            self._lock.release()
            try:
                worker.join(timeout_s)
            finally:
                self._lock.acquire()
            if worker.is_alive():
                raise TimeoutError(f"SkOptSearch: the background fit took longer than {timeout_s} s.")

    def _ready_now(self) -> bool:
        """True when the prepared point is for the next suggestion and the optimizer it was asked from."""
        return (self._ready is not None and self._ready[0] == self._suggested
                and self._ready[2] is self._optimizer)

    def _start_fit(self) -> None:
        """Start the thread unless it runs already (it starts over when the searcher changed under it)."""
        if self._worker is not None and self._worker.is_alive():
            return
        self._worker = threading.Thread(target=self._prepare, name="skopt-fit", daemon=True)
        self._worker.start()

    def _prepare(self) -> None:
        """The thread: tell a copy of the optimizer the queued results (installed: what a synchronous
        searcher's tells would make), ask a copy of that for the next suggestion's point away from the
        running trials; again while results, suggestions or a restore came in meanwhile."""
        while True:
            with self._lock:
                generation, suggested, base = self._generation, self._suggested, self._optimizer
                if base is None or (self._ready_now() and not self._untold):
                    return
                queue, pending = list(self._untold), list(self._live.values())
            try:
                told = copy.deepcopy(base)
                _tell(told, queue)
                asked = copy.deepcopy(told)
                point = _ask(asked, pending)
            except Exception:  # noqa: BLE001 - logged; a waiting suggestion must not hang
                logger.exception("SkOptSearch: the background fit failed; the next point is random.")
                told = asked = base
                point = list(base.space.rvs()[0])
            with self._lock:
                if generation != self._generation:
                    return
                if self._optimizer is not base:  # a suggestion took the prepared point meanwhile
                    continue
                del self._untold[:len(queue)]
                self._optimizer = told
                if suggested == self._suggested:
                    self._ready = (suggested, point, told, asked)
                    if not self._untold:
                        return

    def wait_fitted(self, timeout_s: float | None = None) -> None:
        """Background mode: wait until the thread has told every result and prepared the next point (a
        synchronous answer; used by tests). Does nothing in the synchronous mode."""
        if not self._background:
            return
        with self._lock:
            self._wait_for_thread(lambda: self._optimizer is None or (self._ready_now() and not self._untold),
                                  timeout_s)

    def _tell_queued(self, optimizer: Any) -> None:
        """The synchronous path: tell ``optimizer`` the queued results and empty the queue."""
        _tell(optimizer, self._untold)
        self._untold.clear()

    def _to_config(self, point: list[Any]) -> dict[str, Any]:
        config = copy.deepcopy(self._constants)
        config.update((dim.name, _decode(dim, x)) for dim, x in zip(self._dims, point, strict=True))
        return config

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        """Tell the optimizer the trial's metric (see ``penalty``); repeated or unknown ids are ignored."""
        with self._lock:
            if trial_id in self._done:
                logger.warning("SkOptSearch: trial %s was already completed; repeated completion ignored.",
                               trial_id)
                return
            if trial_id not in self._live:
                logger.warning("SkOptSearch: completion of unknown trial %s ignored (never suggested here).",
                               trial_id)
                return
            point = self._live.pop(trial_id)
            self._done.add(trial_id)
            value = self._metric_value(trial_id, result, error)
            if value is not None:
                # "max" becomes "min" here: skopt minimises. Background: told by the thread, in this order.
                self._untold.append((point, -value if self._mode == "max" else value))
                if not self._background:
                    self._tell_queued(self._optimizer)
                elif self._optimizer is not None:
                    self._start_fit()

    def _metric_value(self, trial_id: str, result: Mapping[str, Any] | None, error: bool) -> float | None:
        """The finite metric value to tell, the penalty, or None (drop)."""
        if result is None and not error:  # Ray removing a trial that never ran: nothing was learnt
            logger.info("SkOptSearch: trial %s ended without a result; its point is not told.", trial_id)
            return None
        raw = None if error else _lookup(result, self._metric)
        if _is_finite(raw):
            return float(raw)
        problem = ("errored" if error else f"did not report the metric {self._metric!r}" if raw is None
                   else f"reported {self._metric!r}={raw!r}")
        if self._penalty is not None:
            logger.info("SkOptSearch: trial %s %s; told as penalty %s.", trial_id, problem, self._penalty)
            return self._penalty
        logger.warning("SkOptSearch: trial %s %s; its point is not told to the optimizer "
                       "(pass SkOptSearch(penalty=...) to tell a finite value instead).", trial_id, problem)
        return None

    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue: optimizer (Xi, yi, random state, model), live trials, options."""
        with self._lock:
            state = {key: getattr(self, "_" + key) for key in _STATE_KEYS}
            return copy.deepcopy({"version": _STATE_VERSION, **state})

    def set_state(self, state: dict[str, Any]) -> None:
        """Load what :meth:`get_state` returned (replaces this searcher's space, options and history)."""
        version = state.get("version") if isinstance(state, dict) else type(state).__name__
        check(version == _STATE_VERSION, f"SkOptSearch state must be a dict with version {_STATE_VERSION}, "
              f"but got {version!r}. Fix: restore from a file written by SkOptSearch.save of this version.")
        state = copy.deepcopy(state)
        state.setdefault("untold", [])  # written before results were queued: all told
        with self._lock:
            for key in _STATE_KEYS:
                setattr(self, "_" + key, state[key])
            self._generation += 1  # a fit under way belongs to the replaced state
            self._ready = None

    def save(self, checkpoint_path: str) -> None:
        """Pickle :meth:`get_state` to ``checkpoint_path`` atomically."""
        atomic_write_bytes(checkpoint_path, pickle.dumps(self.get_state(), protocol=pickle.HIGHEST_PROTOCOL))

    def restore(self, checkpoint_path: str) -> None:
        """Load a file written by :meth:`save`; the searcher continues exactly where it was saved."""
        if not os.path.isfile(checkpoint_path):
            raise FileNotFoundError(f"SkOptSearch.restore: no checkpoint file at {checkpoint_path!r}. "
                                    "Fix: pass the path given to SkOptSearch.save.")
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles the searcher; a lock and a thread do not pickle
        with self._lock:
            return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_worker")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock, self._worker = threading.RLock(), None

    @property
    def optimizer(self) -> Any:
        """The underlying ``skopt.Optimizer`` (None until a space is known). Read it, do not tell it."""
        return self._optimizer

    @property
    def live_trials(self) -> dict[str, dict[str, Any]]:
        """Trial id -> config of the trials suggested and not completed yet."""
        with self._lock:
            return {trial_id: self._to_config(point) for trial_id, point in self._live.items()}

    @property
    def parameter_names(self) -> list[str]:
        """The searched keys, in the optimizer's dimension order."""
        return [dim.name for dim in self._dims]


def _tell(optimizer: Any, results: list[tuple[list[Any], float]]) -> None:
    """Tell ``optimizer`` the (point, objective) ``results`` one by one (a fit each, as skopt's own loop
    would); a failing tell is logged and its point dropped."""
    for point, objective in results:
        try:
            optimizer.tell(point, objective)
        except Exception:  # one bad tell must not end a long experiment (as in Ray's OptunaSearch)
            logger.exception("SkOptSearch: telling point %s = %s to skopt failed; point dropped.",
                             point, objective)


def _ask(optimizer: Any, pending: list[list[Any]]) -> list[Any]:
    """The next point of ``optimizer``, away from the ``pending`` (running) points."""
    model_phase = optimizer.base_estimator_ is not None and optimizer._n_initial_points <= 0  # skopt 0.10.x
    if not (pending and model_phase):
        return list(optimizer.ask())
    # Constant liar: a deep copy (not skopt's copy(), which refits) is told the running points with the
    # best value so far; the optimizer and its random state stay untouched (reproducible).
    liar = copy.deepcopy(optimizer)
    liar.tell(pending, [float(min(optimizer.yi))] * len(pending))
    return list(liar.ask())


def _check_metric_mode(metric: Any, mode: Any) -> None:
    """Validate ``metric``/``mode`` before Ray's base class ``assert``s on them."""
    check(metric is None or isinstance(metric, str), f"metric must be one metric name (a str), but got "
          f"{metric!r}. SkOptSearch optimises one metric; use OptunaSearch for several.")
    check(mode in (None, "min", "max"), f"mode must be 'min' or 'max', but got {mode!r}.")


def _check_max_concurrent(max_concurrent: Any) -> None:
    check(max_concurrent is None or _is_int(max_concurrent, 1),
          f"max_concurrent must be None or an int >= 1, but got {max_concurrent!r}.")


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low


def _is_finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_grid(value: Any) -> bool:
    return isinstance(value, Mapping) and set(value) == {"grid_search"}


def _hides_domain(value: Any) -> bool:
    """Whether ``value`` is, or holds in a dict or list, a Ray domain or a grid search."""
    if isinstance(value, ray_sample.Domain) or _is_grid(value):
        return True
    if isinstance(value, Mapping):
        value = list(value.values())
    return isinstance(value, (list, tuple)) and any(_hides_domain(v) for v in value)


def _unsupported(name: str, what: str, fix: str) -> ConfigError:
    return ConfigError(f"Search space parameter {name!r}: {what} is not supported by SkOptSearch. Fix: {fix}")


def _parse_space(space: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """Split a flat space into skopt dimensions (named after their keys) and constants."""
    dims: list[Any] = []
    constants: dict[str, Any] = {}
    for name, value in space.items():
        if _is_grid(value):
            raise _unsupported(name, "tune.grid_search", "use tune.choice([...]) to let the searcher pick, "
                               "or run the grid with Ray's default search algorithm (searcher: grid).")
        if isinstance(value, ray_sample.Domain):
            dims.append(_dimension(name, value))
        elif _hides_domain(value):
            raise _unsupported(name, "a dict or list holding search domains",
                               "give each searched value its own flat dotted key, such as 'opt.lr'.")
        else:
            constants[name] = value
    return dims, constants


def _dimension(name: str, domain: Any) -> Any:
    """The skopt dimension of a ``tune.loguniform``/``uniform``/``randint``/``choice`` domain."""
    sampler = domain.get_sampler()
    uniform, log = isinstance(sampler, ray_sample.Uniform), isinstance(sampler, ray_sample.LogUniform)
    if isinstance(domain, ray_sample.Categorical) and uniform:
        bad = [c for c in domain.categories if not (c is None or isinstance(c, (str, bool, numbers.Number)))]
        if bad:
            raise _unsupported(name, f"tune.choice over non-scalar categories {bad!r}",
                               "choose among strings or numbers and map them to objects in the trainable.")
        return Categorical(list(domain.categories), name=name)
    if isinstance(domain, ray_sample.Float) and (uniform or log):
        return Real(domain.lower, domain.upper, prior="log-uniform" if log else "uniform", name=name)
    if isinstance(domain, ray_sample.Integer) and uniform:
        return Integer(domain.lower, domain.upper - 1, name=name)  # randint's upper bound is exclusive
    raise _unsupported(name, f"{type(domain).__name__} domain with "
                             f"{type(sampler).__name__.lstrip('_')} sampler",
                       "use tune.loguniform, tune.uniform, tune.randint or tune.choice.")


def _category_index(categories: Any, x: Any) -> int | None:
    """Index of the category equal to ``x`` (True kept apart from 1, False from 0), or None."""
    for i, category in enumerate(categories):
        if isinstance(category, bool) == isinstance(x, bool) and category == x:
            return i
    return None


def _decode(dim: Any, x: Any) -> Any:
    """Optimizer coordinate -> plain Python config value (for a choice, the user's own object)."""
    x = x.item() if isinstance(x, np.generic) else x
    if isinstance(dim, Categorical):
        i = _category_index(dim.categories, x)
        return x if i is None else dim.categories[i]
    return int(x) if isinstance(dim, Integer) else float(x)
