"""A scikit-optimize (Bayesian optimisation) searcher for Ray Tune.

Ray removed its own ``SkOptSearch`` in 2024 (ray-project/ray#43969); this is a small replacement
written against :class:`ray.tune.search.Searcher` around ``skopt.Optimizer.ask`` / ``tell``.

Call order (Ray does this for you; tests do it by hand)::

    searcher = SkOptSearch({"lr.eta0": tune.loguniform(1e-4, 1.0)}, metric="val/acc", mode="max", seed=0)
    config = searcher.suggest("trial_1")            # {"lr.eta0": 0.0123}
    ...                                             # train with config
    searcher.on_trial_complete("trial_1", {"val/acc": 0.91})

or, with the search space in ``param_space``::

    tune.Tuner(trainable, param_space={"lr.eta0": tune.loguniform(1e-4, 1.0), "epochs": 5},
               tune_config=tune.TuneConfig(search_alg=SkOptSearch(seed=0), metric="val/acc", mode="max"))

Design, following Ray's own adapters (``ray/tune/search/optuna/optuna_search.py``):

* The space maps names to Ray Tune domains (``tune.uniform``, ``loguniform``, ``randint``,
  ``lograndint``, ``quniform``, ``qrandint``, ``choice``) or to skopt dimensions (``Real``,
  ``Integer``, ``Categorical``). Any other value is a constant, copied into every config. Nested
  dicts are searched too; a nested parameter is named by its path joined with ``/`` (``"opt/lr"``),
  like Ray's other searchers; flat dotted names (``"lr.eta0"``) are kept as they are.
* ``mode="max"`` is turned into minimisation in one place, :meth:`SkOptSearch._tell`.
* A trial whose metric is missing, NaN or infinite, and a trial that errored, never reaches the
  optimizer as such. By default it is dropped (its point is not told; a warning is logged); with
  ``penalty=P`` it is told as if it had reported the metric value ``P`` instead.
* Concurrent trials: skopt's plain ``ask()`` repeats the same point until the next ``tell``, so while
  other trials are still running the next point is asked from a copy of the optimizer that was told
  the running points with the best value seen so far ("constant liar", skopt's ``cl_min``).
* State (the whole ``skopt.Optimizer`` with its Xi, yi and random state, the live trials, metric,
  mode and seed) is pickled by :meth:`save`, atomically. A restored searcher continues exactly where
  the saved one was: same suggestions, and a trial live at save time can still be completed.
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
import os
import pickle
import tempfile
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from ray.tune.search import Searcher

from ray_rthpo.errors import ConfigError
from ray_rthpo.tune._results import lookup as _lookup
from ray_rthpo.tune._skopt_space import (
    _check_metric_mode,
    _flatten_point,
    _make_base_estimator,
    _Param,
    _parse_space,
    _require_skopt,
    _search_domain_names,
    _set_path,
)

try:
    import skopt
    from skopt.learning import GradientBoostingQuantileRegressor as _SkoptGBRT
    from skopt.space import Categorical as SkCategorical
    from skopt.space import Dimension as SkDimension
    from skopt.space import Integer as SkInteger
    from skopt.space import Real as SkReal
except ImportError:  # pragma: no cover - exercised only where scikit-optimize is missing
    skopt = None
    _SkoptGBRT = object
    SkCategorical = SkDimension = SkInteger = SkReal = None

logger = logging.getLogger(__name__)

__all__ = ["SkOptSearch", "BASE_ESTIMATORS", "ACQ_FUNCS"]

#: skopt surrogate models accepted by ``base_estimator`` ("DUMMY" is plain random search).
BASE_ESTIMATORS = ("GP", "RF", "ET", "GBRT", "DUMMY")
#: Acquisition functions accepted by ``acq_func``. skopt's "EIps"/"PIps" need the trial's run time
#: as a second objective, and "MES"/"PVRS" are not wired up here, so they are refused.
ACQ_FUNCS = ("gp_hedge", "EI", "PI", "LCB")
_STATE_VERSION = 1
_INT32_MAX = int(np.iinfo(np.int32).max)


class SkOptSearch(Searcher):
    """Bayesian optimisation with scikit-optimize behind Ray Tune's ``Searcher`` interface.

    Args:
        space: Parameter name -> Ray Tune domain or skopt dimension (other values are constants).
            Leave it None to take the space from ``Tuner(param_space=...)``.
        metric: The reported metric to optimise (e.g. ``"val/acc"``); may come from ``TuneConfig``.
        mode: ``"min"`` or ``"max"``; may come from ``TuneConfig``.
        seed: Seeds ``skopt.Optimizer(random_state=seed)``: same seed and same history give the same
            suggestions. None: not reproducible.
        base_estimator: skopt surrogate: "GP" (Gaussian process), "RF", "ET", "GBRT", or "DUMMY"
            (random search).
        n_initial_points: Random points told before the surrogate model is used (>= 1).
        acq_func: One of :data:`ACQ_FUNCS`.
        points_to_evaluate: Configs to try first, in order (flat ``{"name": value}`` or nested dicts,
            every searched parameter given, values inside the space).
        max_concurrent: At most this many trials live at once (:meth:`suggest` returns None beyond);
            None: no limit. ``TuneConfig(max_concurrent_trials=...)`` sets it too.
        penalty: What to do with a trial that errored or whose metric is missing, NaN or infinite.
            None (default): drop it — its point is not told to the optimizer and a warning is logged.
            A finite number: tell it as if the trial had reported this metric value (in the metric's
            own units and direction, e.g. ``0.0`` for an accuracy under ``mode="max"``). Keep it of
            the order of the worst real values: a huge penalty squashes a GP's fit of the others.
            A trial that ended without any result and without an error (Ray removes trials that
            never ran this way) is always dropped.

    Raises:
        ImportError: scikit-optimize is not installed.
        ConfigError (a ValueError): a bad option or an unsupported search space entry; the message
            names the parameter and the fix.
    """

    def __init__(
        self,
        space: Mapping[str, Any] | None = None,
        metric: str | None = None,
        mode: str | None = None,
        *,
        seed: int | None = None,
        base_estimator: str = "GP",
        n_initial_points: int = 5,
        acq_func: str = "gp_hedge",
        points_to_evaluate: list[dict[str, Any]] | None = None,
        max_concurrent: int | None = None,
        penalty: float | None = None,
    ) -> None:
        _require_skopt()
        _check_metric_mode(metric, mode)
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**32
        ):
            raise ConfigError(f"seed must be None or an int in [0, 2**32), but got {seed!r}.")
        if base_estimator not in BASE_ESTIMATORS:
            raise ConfigError(f"base_estimator must be one of {BASE_ESTIMATORS}, but got {base_estimator!r}.")
        if (
            isinstance(n_initial_points, bool)
            or not isinstance(n_initial_points, int)
            or n_initial_points < 1
        ):
            raise ConfigError(f"n_initial_points must be an int >= 1, but got {n_initial_points!r}.")
        if acq_func not in ACQ_FUNCS:
            raise ConfigError(f"acq_func must be one of {ACQ_FUNCS}, but got {acq_func!r}.")
        _check_max_concurrent(max_concurrent)
        if penalty is not None and (
            isinstance(penalty, bool) or not isinstance(penalty, numbers.Real) or not math.isfinite(penalty)
        ):
            raise ConfigError(
                f"penalty must be None (drop failed trials) or a finite number, but got {penalty!r}."
            )
        if points_to_evaluate is not None and (
            not isinstance(points_to_evaluate, (list, tuple))
            or not all(isinstance(p, Mapping) for p in points_to_evaluate)
        ):
            raise ConfigError(f"points_to_evaluate must be a list of dicts, but got {points_to_evaluate!r}.")
        if space is not None and not isinstance(space, Mapping):
            raise ConfigError(
                f"space must be a dict of parameter name -> domain, but got {type(space).__name__}: {space!r}."
            )
        super().__init__(metric=metric, mode=mode)

        self._seed = None if seed is None else int(seed)
        self._base_estimator = base_estimator
        self._n_initial_points = n_initial_points
        self._acq_func = acq_func
        self._penalty = None if penalty is None else float(penalty)
        self._max_concurrent = max_concurrent
        self._initial_points: list[dict[str, Any]] = copy.deepcopy(list(points_to_evaluate or []))

        self._params: list[_Param] = []
        self._constants: list[tuple[tuple[str, ...], Any]] = []
        self._optimizer: Any = None
        self._queue: list[list[Any]] = []  # encoded points_to_evaluate not suggested yet
        self._live: dict[str, list[Any]] = {}  # trial id -> point (optimizer coordinates)
        self._done: set[str] = set()  # trial ids already completed
        self._lock = threading.RLock()

        if space is not None:
            params, constants = _parse_space(space)
            if not params:
                raise ConfigError(
                    f"space must contain at least one searched parameter, but got only constants {dict(space)!r}. "
                    "Fix: use Ray Tune domains (tune.loguniform, ...) or skopt dimensions as values."
                )
            self._install(params, constants)

    # ---------------------------------------------------------------------------- setup

    def _install(self, params: list[_Param], constants: list[tuple[tuple[str, ...], Any]]) -> None:
        """Build the optimizer for ``params`` and encode ``points_to_evaluate``."""
        queue = [
            self._encode_point(p, f"points_to_evaluate[{i}]", params)
            for i, p in enumerate(self._initial_points)
        ]
        self._params = params
        self._constants = constants
        self._queue = queue
        n_initial_points = self._n_initial_points
        if self._base_estimator == "DUMMY":
            # skopt's own "DUMMY" (base_estimator=None) crashes in is_regressor(None) with
            # scikit-learn >= 1.6. Endless random initial points are the same random search: skopt
            # draws them with space.rvs(random_state=rng) and never fits a model.
            n_initial_points = _INT32_MAX
        self._optimizer = skopt.Optimizer(
            dimensions=[p.dimension for p in params],
            base_estimator=_make_base_estimator(self._base_estimator, self._seed),
            n_initial_points=n_initial_points,
            acq_func=self._acq_func,
            random_state=self._seed,
            model_queue_size=1,  # keep only the latest surrogate: checkpoints stay small
        )

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        """Take metric, mode and (unless a space was given) the search space from Tune.

        Ray calls this from ``tune.run``/``Tuner.fit`` with ``TuneConfig.metric``/``mode`` and
        ``param_space``. When this searcher already has a space, ``config`` may hold constants
        only (they reach every trial through Ray); search domains there raise ConfigError (Ray
        itself would not notice skopt dimensions and pass them on as constants). Returns False when
        there is no space anywhere, True otherwise.
        """
        with self._lock:
            _check_metric_mode(metric, mode)
            if self._optimizer is not None:
                searched = _search_domain_names(config)
                if searched:
                    raise ConfigError(
                        f"SkOptSearch already has a search space, but param_space searches {searched} too. "
                        "Fix: define the search space in one place, SkOptSearch(space=...) or "
                        "Tuner(param_space=...), not both."
                    )
                self._adopt_metric_mode(metric, mode)
                return True
            params, constants = _parse_space(config)
            if not params:
                return False
            self._adopt_metric_mode(metric, mode)
            self._install(params, constants)
            return True

    def _adopt_metric_mode(self, metric: str | None, mode: str | None) -> None:
        for attr, label, value in (("_metric", "metric", metric), ("_mode", "mode", mode)):
            current = getattr(self, attr)
            if value is None:
                continue
            if current is not None and current != value:
                raise ConfigError(
                    f"{label} was given twice with different values: SkOptSearch({label}={current!r}) and "
                    f"TuneConfig({label}={value!r}). Fix: give it in one place only."
                )
            setattr(self, attr, value)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """Called by Ray's ConcurrencyLimiter (``TuneConfig(max_concurrent_trials=...)``): handled here."""
        _check_max_concurrent(max_concurrent)
        self._max_concurrent = max_concurrent
        return True

    # ---------------------------------------------------------------------------- ask

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """Return the next config, or None while ``max_concurrent`` trials are live (Tune asks again).

        Never returns ``Searcher.FINISHED``: the number of trials is Tune's ``num_samples``.
        """
        with self._lock:
            self._check_ready()
            if trial_id in self._live:  # asked twice for the same trial: same answer
                return self._to_config(self._live[trial_id])
            if self._max_concurrent is not None and len(self._live) >= self._max_concurrent:
                return None
            point = self._queue.pop(0) if self._queue else self._ask()
            self._live[trial_id] = point
            return self._to_config(point)

    def _ask(self) -> list[Any]:
        opt = self._optimizer
        pending = list(self._live.values())
        model_phase = opt.base_estimator_ is not None and opt._n_initial_points <= 0  # skopt private, 0.10.x
        if not (pending and model_phase):
            return list(opt.ask())
        # Constant liar: pretend the running points came back with the best value seen so far, so
        # the next point is not the one already running. A deep copy (not skopt's copy(), which
        # refits once more) is told the lies; the real optimizer and its random state are left
        # untouched, so the answer depends only on the history and stays reproducible.
        liar = copy.deepcopy(opt)
        liar.tell(pending, [float(min(opt.yi))] * len(pending))
        return list(liar.ask())

    def _check_ready(self) -> None:
        if self._optimizer is None:
            raise RuntimeError(
                "SkOptSearch has no search space. Fix: pass space= to SkOptSearch, or put Ray Tune "
                "domains (tune.loguniform, ...) in Tuner(param_space=...)."
            )
        if not self._metric or not self._mode:
            raise RuntimeError(
                f"SkOptSearch needs metric and mode, but got metric={self._metric!r}, mode={self._mode!r}. "
                "Fix: pass them to SkOptSearch or to TuneConfig(metric=..., mode=...)."
            )

    def _to_config(self, point: Sequence[Any]) -> dict[str, Any]:
        config: dict[str, Any] = {}
        for path, value in self._constants:
            _set_path(config, path, copy.deepcopy(value))
        for param, x in zip(self._params, point, strict=True):
            _set_path(config, param.path, param.decode(x))
        return config

    def _encode_point(
        self, point: Mapping[str, Any], where: str, params: list[_Param] | None = None
    ) -> list[Any]:
        params = self._params if params is None else params
        flat = _flatten_point(point)
        names = [p.name for p in params]
        missing = [n for n in names if n not in flat]
        if missing:
            raise ConfigError(
                f"{where} must give every searched parameter, but misses {missing} (it has {sorted(flat)})."
            )
        return [p.encode(flat[p.name], f"{where}[{p.name!r}]") for p in params]

    # ---------------------------------------------------------------------------- tell

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        """Tell the optimizer the trial's metric (see ``penalty`` for failed trials).

        A second completion of the same trial and an unknown trial id are ignored with a warning.
        """
        with self._lock:
            if trial_id in self._done:
                logger.warning(
                    "SkOptSearch: trial %s was already completed; repeated completion ignored.", trial_id
                )
                return
            point = self._live.pop(trial_id, None)
            if point is None:
                logger.warning(
                    "SkOptSearch: completion of unknown trial %s ignored (never suggested here).", trial_id
                )
                return
            self._done.add(trial_id)
            value = self._metric_value(trial_id, result, error)
            if value is not None:
                self._tell(point, value)

    def add_evaluated_point(
        self,
        parameters: dict[str, Any],
        value: float,
        error: bool = False,
        pruned: bool = False,
        intermediate_values: list[float] | None = None,
    ) -> None:
        """Tell the optimizer a point evaluated elsewhere (warm start; used by ``add_evaluated_trials``)."""
        with self._lock:
            self._check_ready()
            point = self._encode_point(parameters, "add_evaluated_point(parameters)")
            failed = error or pruned
            metric_value = self._metric_value(
                "<evaluated point>", None if failed else {self._metric: value}, failed
            )
            if metric_value is not None:
                self._tell(point, metric_value)

    def _metric_value(self, trial_id: str, result: Mapping[str, Any] | None, error: bool) -> float | None:
        """The finite metric value to tell, the penalty, or None (drop)."""
        problem = None
        if error:
            problem = "errored"
        elif result is None:
            problem = "ended without a result"
        else:
            raw = _lookup(result, self._metric)
            if raw is None:
                problem = f"did not report the metric {self._metric!r}"
            elif isinstance(raw, bool) or not isinstance(raw, numbers.Real):
                problem = f"reported a non-numeric {self._metric!r}={raw!r}"
            elif not math.isfinite(raw):
                problem = f"reported {self._metric!r}={raw!r}"
            else:
                return float(raw)
        if result is None and not error:
            # Ray removes trials that never ran (pending when the experiment stopped) this way:
            # nothing was learnt about their point, so no penalty either.
            logger.info("SkOptSearch: trial %s ended without a result; its point is not told.", trial_id)
            return None
        if self._penalty is not None:
            logger.info("SkOptSearch: trial %s %s; told as penalty %s.", trial_id, problem, self._penalty)
            return self._penalty
        logger.warning(
            "SkOptSearch: trial %s %s; its point is not told to the optimizer "
            "(pass SkOptSearch(penalty=...) to tell a finite value instead).",
            trial_id,
            problem,
        )
        return None

    def _tell(self, point: list[Any], metric_value: float) -> None:
        """The one place where "max" becomes "min": skopt minimises."""
        objective = -metric_value if self._mode == "max" else metric_value
        try:
            self._optimizer.tell(point, objective)
        except Exception:  # one bad tell must not end a long experiment (Ray's OptunaSearch does the same)
            logger.exception(
                "SkOptSearch: telling point %s = %s to skopt failed; point dropped.", point, objective
            )

    # ---------------------------------------------------------------------------- state

    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue: optimizer (Xi, yi, random state, model), live trials, options."""
        with self._lock:
            return copy.deepcopy(
                {
                    "version": _STATE_VERSION,
                    "metric": self._metric,
                    "mode": self._mode,
                    "seed": self._seed,
                    "base_estimator": self._base_estimator,
                    "n_initial_points": self._n_initial_points,
                    "acq_func": self._acq_func,
                    "penalty": self._penalty,
                    "max_concurrent": self._max_concurrent,
                    "initial_points": self._initial_points,
                    "params": self._params,
                    "constants": self._constants,
                    "optimizer": self._optimizer,
                    "queue": self._queue,
                    "live": self._live,
                    "done": self._done,
                }
            )

    def set_state(self, state: dict[str, Any]) -> None:
        """Load what :meth:`get_state` returned (replaces this searcher's space, options and history)."""
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            found = state.get("version") if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"SkOptSearch state must be a dict with version {_STATE_VERSION}, but got {found!r}. "
                "Fix: restore from a file written by SkOptSearch.save of this version."
            )
        state = copy.deepcopy(state)
        with self._lock:
            self._metric = state["metric"]
            self._mode = state["mode"]
            self._seed = state["seed"]
            self._base_estimator = state["base_estimator"]
            self._n_initial_points = state["n_initial_points"]
            self._acq_func = state["acq_func"]
            self._penalty = state["penalty"]
            self._max_concurrent = state["max_concurrent"]
            self._initial_points = state["initial_points"]
            self._params = state["params"]
            self._constants = state["constants"]
            self._optimizer = state["optimizer"]
            self._queue = state["queue"]
            self._live = state["live"]
            self._done = state["done"]

    def save(self, checkpoint_path: str) -> None:
        """Pickle :meth:`get_state` to ``checkpoint_path`` atomically (temporary file + ``os.replace``)."""
        data = pickle.dumps(self.get_state(), protocol=pickle.HIGHEST_PROTOCOL)
        directory = os.path.dirname(os.path.abspath(checkpoint_path))
        fd, tmp = tempfile.mkstemp(prefix=".skopt-search-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, checkpoint_path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def restore(self, checkpoint_path: str) -> None:
        """Load a file written by :meth:`save`; the searcher continues exactly where it was saved."""
        if not os.path.isfile(checkpoint_path):
            raise FileNotFoundError(
                f"SkOptSearch.restore: no checkpoint file at {checkpoint_path!r}. "
                "Fix: pass the path given to SkOptSearch.save."
            )
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.set_state(state)

    def __getstate__(self) -> dict[str, Any]:
        # Ray pickles the searcher (Tuner state, experiment checkpoints); locks do not pickle.
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # ---------------------------------------------------------------------------- inspection

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
        """Names of the searched parameters, in the optimizer's dimension order."""
        return [p.name for p in self._params]


def _check_max_concurrent(max_concurrent: Any) -> None:
    if max_concurrent is not None and (
        isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or max_concurrent < 1
    ):
        raise ConfigError(f"max_concurrent must be None or an int >= 1, but got {max_concurrent!r}.")
