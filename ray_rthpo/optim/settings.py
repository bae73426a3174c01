"""The settings of :class:`ray_rthpo.optim.RTHPO`, declared once: name, range, default, meaning and fix.

Everything that checks or describes a setting reads :data:`SETTINGS`:

* ``RTHPO(...)`` and ``add_param_group`` check every group with :func:`check`
  (ray_rthpo/optim/rthpo.py);
* the run config (ray_rthpo/config.py) checks each ``lr.*`` / ``optim.*`` key that is one of these settings
  with the same :func:`problem`, its message naming the config key (``lr.beta``) where the optimizer's names
  the argument (``beta``): the words after the name are the same;
* the Trainer builds the optimizer's keywords from a run config with :func:`from_config`
  (ray_rthpo/training/methods.py), so no second list of keywords exists;
* the argument table of docs/optimizer.md is :func:`markdown_table` (``python -m ray_rthpo.optim.settings``).

Torch-free, so that the config layer loads without torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ray_rthpo.hypergrad import hyper_updates
from ray_rthpo.optim import schedules

#: ``method``: the hypergradient methods (the run configs' other ``lr.method`` values are other optimizers).
METHODS = ("rthpo", "marthe", "hd_val", "hd_train")
#: ``method`` -> MARTHE's discount of the tangent (``marthe`` takes ``mu``).
METHOD_MU = {"rthpo": 1.0, "hd_val": 0.0, "hd_train": 0.0}
BASES = ("sgd", "adamw")
HVP_ROUTES = ("auto", "double_backward", "forward_over_reverse", "forward_over_reverse_bn")
VAL_MODES = ("backward", "forward")
#: ``hypergrad_at``: where the validation loss is differentiated: the current weights, or their running
#: average (the point an annealed run heads for, which a noisy iterate's loss understates).
HYPERGRAD_POINTS = ("weights", "average")
#: The defaults that follow ``base``: ``lr`` and ``weight_decay`` as torch's own optimizers have them
#: (torch.optim.SGD / AdamW); ``backoff_rollback`` as the suite measured it (docs/method.md: on over SGD
#: it rescues the runs started far above the stable range; over AdamW it cost accuracy).
BASE_DEFAULTS: dict[str, dict[str, Any]] = {
    "sgd": {"lr": 1e-3, "weight_decay": 0.0, "backoff_rollback": True},
    "adamw": {"lr": 1e-3, "weight_decay": 1e-2, "backoff_rollback": False},
}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _warmup_ok(value: Any) -> bool:
    try:
        schedules.warmup_steps(value, 2)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Setting:
    """One setting of RTHPO.

    ``valid`` says whether a value is allowed; a value that is not gets the message
    ``"<name> must be <requirement>, but got <value>; <fix>."``. ``default`` is RTHPO's (a dict by ``base``
    for the settings whose default follows it, as torch's optimizers have them); ``config_key`` is the run
    config's key for it (None: not a run-config key); ``shared``: the same in every param group.
    """

    name: str
    default: Any
    requirement: str
    fix: str
    meaning: str
    valid: Callable[[Any], bool]
    config_key: str | None = None
    shared: bool = True


def _choice(names: Iterable[str]) -> Callable[[Any], bool]:
    names = tuple(names)
    return lambda value: isinstance(value, str) and value in names


def _one_of(names: Iterable[str]) -> str:
    return "one of " + ", ".join(names)


_DECLARED = (
    Setting("lr", {b: d["lr"] for b, d in BASE_DEFAULTS.items()}, "a finite number > 0", "pass the initial "
            "learning rate eta-bar",
            "The initial learning rate η̄, in the base optimizer's units (SGD: step per unit of "
            "gradient; AdamW: about the step of each weight), at most `eta_max`; with a `schedule`, the "
            "initial scale s (the shape's peak). None: the base optimizer's default, as torch's (1e-3).",
            lambda v: _number(v) and v > 0, "lr.eta0"),
    Setting("beta", None, "a finite number >= 0", "0 keeps the learning rate fixed",
            "The hyper-learning rate β. None: the rule's default (0.1 per step for `multiplicative`; "
            "docs/beta.md). The scale-free rules (`multiplicative`, `adam_log`, `sign_log`): a relative "
            "change of η per step (per √T steps with `beta_horizon='sqrt'`), the same for any base and "
            "model. `additive` (the paper's eq. 2): units of η² per unit of loss, decades apart between "
            "bases and models: search it on a log scale.",
            lambda v: _number(v) and v >= 0, "lr.beta"),
    Setting("base", "sgd", _one_of(BASES), "use 'sgd' or 'adamw'",
            "`sgd` (`momentum`, L2 `weight_decay`, as `torch.optim.SGD`) or `adamw` "
            "(`betas`, `eps`, decoupled `weight_decay`, as `torch.optim.AdamW`); the weights follow torch's "
            "own update exactly.",
            _choice(BASES), "optim.base"),
    Setting("method", "rthpo", _one_of(METHODS), "rthpo is the paper's method",
            "`rthpo` (exact tangent, μ = 1), `marthe` (discounted tangent, `mu`), `hd_val` "
            "(first order, μ = 0), `hd_train` (first order with the training gradient: no `val_closure`).",
            _choice(METHODS)),
    Setting("mu", None, "a number in [0, 1]", "1 is RT-HPO, 0 is first order",
            "MARTHE's discount of the tangent; only for method='marthe'.",
            lambda v: _number(v) and 0.0 <= v <= 1.0, "lr.mu"),
    Setting("momentum", 0.0, "in [0, 1)", "0 is plain SGD",
            "SGD's heavy-ball momentum (dampening 0), as torch's; 0 with AdamW (its momentum is `betas[0]`). "
            "May differ between param groups.",
            lambda v: _number(v) and 0.0 <= v < 1.0, "optim.momentum", shared=False),
    Setting("weight_decay", {b: d["weight_decay"] for b, d in BASE_DEFAULTS.items()}, "a finite number >= 0",
            "0 turns it off",
            "L2 decay (SGD) or decoupled decay (AdamW). None: the base optimizer's default, as "
            "torch's (SGD 0, AdamW 0.01). May differ between param groups.",
            lambda v: _number(v) and v >= 0, "optim.weight_decay", shared=False),
    Setting("betas", (0.9, 0.999), "two numbers in [0, 1)", "torch's default is (0.9, 0.999)",
            "AdamW's moment decays, as torch's. May differ between param groups.",
            lambda v: isinstance(v, (tuple, list)) and len(v) == 2 and all(_number(b) and 0.0 <= b < 1.0
                                                                           for b in v),
            "optim.betas", shared=False),
    Setting("eps", 1e-8, "a finite number > 0", "torch's default is 1e-8", "AdamW's epsilon, as torch's. May "
            "differ between param groups.",
            lambda v: _number(v) and v > 0, "optim.eps", shared=False),
    Setting("eta_max", 10.0, "a finite number > 0", "it is the largest learning rate allowed",
            "The tuned value is kept in [0, eta_max].", lambda v: _number(v) and v > 0, "lr.eta_max"),
    Setting("hypergrad_clip", None, "None (null in a config) or a number > 0", "None turns it off",
            "Clip the hypergradient h to [−c, c] (units of h: loss per unit of η); the training gradient is "
            "never clipped.",
            lambda v: v is None or (_number(v) and v > 0), "lr.hypergrad_clip"),
    Setting("hyper_update", hyper_updates.DEFAULT_HYPER_UPDATE, _one_of(hyper_updates.HYPER_UPDATES),
            "'additive' is the paper's rule",
            "How h moves the tuned value: `multiplicative` (normalised by |∇E| |z|), `additive` (the paper's "
            "eq. 2), `adam_log` (Adam on log η), `sign_log`; the equations are in "
            "ray_rthpo/hypergrad/hyper_updates.py.",
            _choice(hyper_updates.HYPER_UPDATES), "lr.hyper_update"),
    Setting("hvp", "auto", _one_of(HVP_ROUTES), "'auto' picks one",
            "How H z is computed: `double_backward` (any closure), `forward_over_reverse`, "
            "`forward_over_reverse_bn` (one torch.func pass; need a ModelClosure), or `auto`: "
            "`forward_over_reverse_bn` for a ModelClosure of a model with BatchNorm, else `double_backward`.",
            _choice(HVP_ROUTES), "lr.hvp"),
    Setting("val_mode", "backward", _one_of(VAL_MODES), "'backward' is the default",
            "`backward` (a validation gradient) or `forward` (one JVP along z; needs a ModelClosure).",
            _choice(VAL_MODES), "lr.val_mode"),
    Setting("hvp_every", 1, "an integer >= 1", "1 computes it every step",
            "The HVP only every k-th step (H z dropped in between).",
            lambda v: _integer(v) and v >= 1, "lr.hvp_every"),
    Setting("hvp_batch_fraction", 1.0, "in (0, 1]", "1.0 uses the whole batch",
            "The HVP on the first fraction of the batch (below 1: needs a ModelClosure).",
            lambda v: _number(v) and 0.0 < v <= 1.0, "lr.hvp_batch_fraction"),
    Setting("val_every", 1, "an integer >= 1", "1 computes it every step",
            "The hypergradient only every k-th step (the tuned value moves by k steps' worth).",
            lambda v: _integer(v) and v >= 1, "lr.val_every"),
    Setting("val_batch_fraction", 1.0, "in (0, 1]", "1.0 uses the whole batch",
            "The validation term on the first fraction of the validation batch (below 1: a ModelClosure).",
            lambda v: _number(v) and 0.0 < v <= 1.0, "lr.val_batch_fraction"),
    Setting("schedule", None, f"None, {_one_of(schedules.SCHEDULES)}, or a callable step -> factor",
            "warmup_cosine is the usual choice",
            "The shape φ whose scale s is tuned: step t uses η_t = s φ(t) "
            "(`warmup_cosine`, `warmup_linear` need `total_steps`); `param_group['lr']` and `opt.scale` hold "
            "s, `opt.eta` the learning rate itself.",
            lambda v: v is None or callable(v) or (isinstance(v, str) and v in schedules.SCHEDULES),
            "lr.schedule"),
    Setting("total_steps", None, "None or an integer >= 1", "pass the run's number of steps",
            "The run's length T: the named shapes' horizon, beta_horizon='sqrt''s T, tune_fraction's base.",
            lambda v: v is None or (_integer(v) and v >= 1)),
    Setting("warmup", schedules.DEFAULT_WARMUP, "a fraction of the run in [0, 1) or a whole number of steps",
            "0.05 warms up over the first 5% of the steps",
            "The named shapes' linear warmup.", _warmup_ok, "lr.warmup"),
    Setting("beta_horizon", "step", _one_of(hyper_updates.BETA_HORIZONS),
            "'sqrt' keeps the drift of eta from growing with the run's length",
            "step: beta per step; sqrt: beta / sqrt(T) per step (T = total_steps, else "
            f"{hyper_updates.ASSUMED_HORIZON} assumed).", _choice(hyper_updates.BETA_HORIZONS),
            "lr.beta_horizon"),
    Setting("tune_fraction", 1.0, "in (0, 1]", "1.0 tunes over the whole run",
            "Hypergradient work over the first fraction of total_steps only; then plain "
            "base-optimizer steps.",
            lambda v: _number(v) and 0.0 < v <= 1.0, "lr.tune_fraction"),
    Setting("backoff", None, "None (null in a config) or a number > 1", "2.0 halves the rate when the "
                                                                        "loss doubles",
            "While tuning, a training loss above backoff x its running mean halves the tuned value.",
            lambda v: v is None or (_number(v) and v > 1.0), "lr.backoff"),
    Setting("backoff_rollback", {b: d["backoff_rollback"] for b, d in BASE_DEFAULTS.items()},
            "true or false", "write true or false",
            "With `backoff`: a spike also undoes the step that led to it (the weights and the optimizer's "
            "state go back to a copy kept before that step, SGD's momentum restarts) and later losses are "
            "compared with the loss of the point returned to, so spikes in a row halve the rate again; a "
            "copy of the weights and state per step while tuning, kept in `state_dict()`. None: the "
            "base's default.",
            lambda v: v is None or isinstance(v, bool), "lr.backoff_rollback"),
    Setting("hypergrad_at", "weights", _one_of(HYPERGRAD_POINTS), "'weights' is the paper's RT-HPO",
            "`weights`: h = ∇E(w_t) · z_t (paper eq. 5). `average`: the validation loss at a running average "
            "w̄ of the weights, differentiated exactly along the average z̄ of the tangents, h = ∇E(w̄_t) · "
            "z̄_t = dE(w̄_t)/ds; w̄ and z̄ are updated every tuning step (`average_window`), two more "
            "tensors per parameter while tuning. Not with `method='hd_train'`.",
            _choice(HYPERGRAD_POINTS), "lr.hypergrad_at"),
    Setting("average_window", 0.1, "in (0, 1]", "0.1 averages over about a tenth of the run",
            "With `hypergrad_at='average'`: the average's time constant as a fraction of T (`total_steps`, "
            f"else {hyper_updates.ASSUMED_HORIZON} assumed): step t weighs the new weights by "
            "max(1/t, 1/(average_window · T)), a plain mean until then an exponential one.",
            lambda v: _number(v) and 0.0 < v <= 1.0, "lr.average_window"),
    Setting("agreement_gain", hyper_updates.DEFAULT_AGREEMENT_GAIN, "a finite number >= 1", "1 turns it off",
            "With `hyper_update='multiplicative'`: a hypergradient whose sign agrees with the r − 1 before "
            "it moves the scale min(r, agreement_gain) times as far (in log space); a sign change starts the "
            "count again. 1: the rule as it is. Not a default: docs/method.md measures it.",
            lambda v: _number(v) and v >= 1.0, "lr.agreement_gain"),
)

#: Every setting of RTHPO, by name, in the order of its signature.
SETTINGS: dict[str, Setting] = {s.name: s for s in _DECLARED}
#: The settings every param group shares: one learning rate (and how it moves) for all parameters.
SHARED = tuple(name for name, s in SETTINGS.items() if s.shared and name not in ("schedule", "warmup"))
#: Run-config key -> setting name, for the keys that are RTHPO settings.
CONFIG_KEYS = {s.config_key: s.name for s in _DECLARED if s.config_key is not None}


class SettingError(ValueError):
    """A setting out of its range: :attr:`label` (the argument, or the config key) and :attr:`detail` (the
    words after it), so that the config layer can say the same with its own key."""

    def __init__(self, label: str, detail: str, prefix: str = "RTHPO: ") -> None:
        super().__init__(f"{prefix}{label} {detail}")
        self.label = label
        self.detail = detail


def default(name: str, base: str = "sgd") -> Any:
    """RTHPO's default of setting ``name`` (for the settings of :data:`BASE_DEFAULTS`: the ``base``
    optimizer's)."""
    value = SETTINGS[name].default
    return value[base] if isinstance(value, dict) else value


def problem(name: str, value: Any) -> str | None:
    """None when ``value`` is allowed for setting ``name``; else the words that follow its name in the error:
    ``"must be <requirement>, but got <value>; <fix>."``."""
    setting = SETTINGS[name]
    if setting.valid(value):
        return None
    return f"must be {setting.requirement}, but got {value!r}; {setting.fix}."


def relation_problem(values: Mapping[str, Any], label: Callable[[str], str] = str) -> tuple[str, str] | None:
    """The first rule between settings that ``values`` breaks, as (the setting to change, the words after
    its label), each setting named by ``label(name)``; None when they agree. ``values`` may lack settings
    (a rule is checked only when all its settings are there)."""
    def has(*names: str) -> bool:
        return all(n in values for n in names)

    if has("lr", "eta_max") and _number(values["lr"]) and values["lr"] > values["eta_max"]:
        return "lr", (f"({values['lr']!r}) must not exceed {label('eta_max')} ({values['eta_max']!r}); "
                      f"lower {label('lr')} or raise {label('eta_max')}.")
    if has("base", "momentum") and values["base"] == "adamw" and values["momentum"] != 0.0:
        return "momentum", (f"must be 0 with {label('base')} adamw, but got {values['momentum']!r}; "
                            f"AdamW's momentum is {label('betas')}[0], so set {label('momentum')} to 0.")
    if has("val_mode", "hyper_update") and values["val_mode"] == "forward" \
            and values["hyper_update"] in hyper_updates.NEEDS_NORMS:
        return "val_mode", (f"must be backward with {label('hyper_update')} {values['hyper_update']}, "
                            "which divides by |grad E|, a norm a forward-mode JVP does not give; set "
                            f"{label('val_mode')} to backward, or {label('hyper_update')} to adam_log "
                            "(or another rule that needs no norm).")
    if has("hypergrad_at", "method") and values["hypergrad_at"] == "average" \
            and values["method"] == "hd_train":
        return "hypergrad_at", (f"must be weights with {label('method')} hd_train, which differentiates the "
                                "training loss at the weights; set it to weights, or use a method with a "
                                "validation term (rthpo).")
    if has("agreement_gain", "hyper_update") and _number(values["agreement_gain"]) \
            and values["agreement_gain"] > 1.0 and values["hyper_update"] != "multiplicative":
        return "agreement_gain", (f"must be 1 with {label('hyper_update')} {values['hyper_update']}, which "
                                  "has no cosine whose sign runs it counts; set it to 1, or "
                                  f"{label('hyper_update')} to multiplicative.")
    if has("val_mode", "method") and values["val_mode"] == "forward" and values["method"] == "hd_train":
        return "val_mode", (f"must be backward with {label('method')} hd_train, which has no "
                            f"validation pass; set {label('val_mode')} to backward.")
    return None


def check(values: Mapping[str, Any], label: Callable[[str], str] = str, prefix: str = "RTHPO: ") -> None:
    """Raise :class:`SettingError` for the first setting in ``values`` out of its range, then for the first
    rule between them that is broken (:func:`relation_problem`)."""
    for name, value in values.items():
        words = problem(name, value)
        if words is not None:
            raise SettingError(label(name), words, prefix)
    broken = relation_problem(values, label)
    if broken is not None:
        raise SettingError(label(broken[0]), broken[1], prefix)


def from_config(read: Callable[[str], Any]) -> dict[str, Any]:
    """RTHPO's keywords from a run config: ``{name: read(config_key)}`` for every setting that is a run-config
    key (``read("lr.eta0")`` returns the config's value)."""
    return {name: read(key) for key, name in CONFIG_KEYS.items()}


#: RTHPO's arguments that are no group setting: (name, default, meaning), for the argument table.
OTHER_ARGUMENTS = (
    ("params", "(required)", "Parameters or param groups, as for any torch.optim optimizer; groups may "
     "differ in `momentum`, `weight_decay`, `betas`, `eps`, and share the one learning rate being tuned."),
    ("model", "None", "The module, when the closures are bare functions: the validation term then "
     "runs with it in eval mode (a ModelClosure names its module itself)."),
    ("timing", "False", "Measure the seconds of hypergradient work (`opt.last_step.hyper_seconds`; "
     "on CUDA it synchronises the device around each part)."),
    ("process_group", "None", "Under torch.distributed: the group to average over (None: the default group; "
     "False: none); docs/distributed.md."),
)
#: The markers of the generated table in docs/optimizer.md.
TABLE_MARKERS = ("<!-- rthpo-arguments:start -->", "<!-- rthpo-arguments:end -->")


def markdown_table() -> str:
    """The argument table of docs/optimizer.md: every argument of RTHPO, its default, what it allows, what it
    means, and its run-config key (generated:
    ``python -m ray_rthpo.optim.settings --write docs/optimizer.md``)."""
    rows = ["| argument | default | allowed | meaning | run config |", "|---|---|---|---|---|"]
    name, default_, meaning = OTHER_ARGUMENTS[0]
    rows.append(f"| `{name}` | {default_} | | {meaning} | |")
    for s in _DECLARED:
        shown = (", ".join(f"{b} {v!r}" for b, v in s.default.items()) if isinstance(s.default, dict)
                 else repr(s.default))
        key = f"`{s.config_key}`" if s.config_key else ""
        rows.append(f"| `{s.name}` | `{shown}` | {s.requirement} | {_cell(s.meaning)} | {key} |")
    for name, default_, meaning in OTHER_ARGUMENTS[1:]:
        rows.append(f"| `{name}` | `{default_}` | | {_cell(meaning)} | |")
    return "\n".join(rows) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def write_table(path: str) -> bool:
    """Replace the block between :data:`TABLE_MARKERS` in the Markdown file ``path`` with
    :func:`markdown_table`; True when the file changed."""
    from pathlib import Path

    file = Path(path)
    text = file.read_text()
    start, end = TABLE_MARKERS
    if start not in text or end not in text:
        raise ValueError(f"{path} has no {start} ... {end} block; add the two markers where the table goes.")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{start}\n\n{markdown_table()}\n{end}{tail}"
    if new != text:
        file.write_text(new)
    return new != text


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        print(f"{sys.argv[2]}: {'rewritten' if write_table(sys.argv[2]) else 'already up to date'}")
    else:
        print(markdown_table(), end="")


__all__ = ["SETTINGS", "SHARED", "CONFIG_KEYS", "METHODS", "METHOD_MU", "BASES", "HVP_ROUTES", "VAL_MODES",
           "BASE_DEFAULTS", "Setting", "SettingError", "default", "problem", "relation_problem", "check",
           "from_config", "markdown_table", "write_table", "OTHER_ARGUMENTS", "TABLE_MARKERS"]
