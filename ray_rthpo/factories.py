"""A user's own model, data and loss, named in a run config as ``module:attribute`` and imported on use.

    model: {factory: mypkg.models:build, factory_args: {hidden: 64}}
    data: {factory: mypkg.data:load, factory_args: {path: /data/table.csv}}
    train: {loss: mypkg.losses:my_loss}

Signatures (``factory_args`` are passed as keyword arguments):

* ``build(input_shape, num_classes, **model.factory_args) -> torch.nn.Module``: ``input_shape`` is the
  shape of one input (``x.shape[1:]`` of the data), the module maps a batch ``(N, *input_shape)`` to
  logits ``(N, num_classes)``.
* ``load(seed=train.seed, **data.factory_args)``: the train, validation and test splits, see
  :mod:`ray_rthpo.data.user`.
* ``loss(output, target) -> scalar tensor`` (the batch mean), default ``torch.nn.functional.cross_entropy``;
  a ``torch.nn.Module`` class (``torch.nn:CrossEntropyLoss``) is instantiated without arguments.

Where Python finds the module: ``sys.path`` of the process, with the folders of ``train.pythonpath`` put
in front of it first (:func:`use_pythonpath`). ``rthpo train|run|compare`` adds the current directory and
the config file's folder to ``train.pythonpath`` (absolute), so Ray trials find the module wherever they
run, as long as those folders exist there (a local Ray, or a cluster with the same layout).

Everything that can go wrong raises :class:`~ray_rthpo.errors.ConfigError` with one line naming the key,
the value and the fix; :func:`ray_rthpo.training.user_code.check_user_code` runs every check once,
before a run or Ray starts.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ray_rthpo.config import check_spec
from ray_rthpo.errors import ConfigError

if TYPE_CHECKING:
    from ray_rthpo.config import Config, ModelConfig

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: Run-config keys that name user code.
KEYS = ("model.factory", "data.factory", "train.loss")
#: What to do when a module cannot be found.
PATH_FIX = ("run from the folder that holds it, put it next to the config file, list its folder in "
            "train.pythonpath, or pip install it (on a cluster: see the README, 'Your own model')")


def uses_user_code(config: Config) -> bool:
    """True when the run config names a user factory or loss."""
    return any(v is not None for v in (config.model.factory, config.data.factory, config.train.loss))


def workload_name(config: Config) -> str:
    """``data/model`` as shown to the user: the dataset and model names, or the factories that replace
    them."""
    return f"{config.data.factory or config.data.name}/{config.model.factory or config.model.name}"


def use_pythonpath(paths: Iterable[str]) -> None:
    """Put ``paths`` in front of ``sys.path`` (in their order), each once; the import caches are refreshed."""
    new = [str(p) for p in paths if str(p) not in sys.path]
    if new:
        sys.path[:0] = new
        importlib.invalidate_caches()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def import_object(spec: str, key: str) -> Any:
    """The callable ``spec`` (``module:attribute``) names; ConfigError naming ``key`` when it cannot be
    had."""
    check_spec(key, spec)
    module_name, _, attribute = spec.partition(":")
    where = f"{key} {spec!r}"
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        missing = err.name or module_name
        if module_name == missing or module_name.startswith(missing + "."):
            raise ConfigError(f"{where}: no module named {missing!r} on the Python path; "
                              f"{PATH_FIX}.") from None
        raise ConfigError(f"{where}: importing {module_name!r} failed ({_first_line(err)}); install what it "
                          "imports.") from None
    except Exception as err:  # the user's module raised while being imported
        raise ConfigError(f"{where}: importing {module_name!r} raised {_first_line(err)}; fix "
                          "that module.") from None
    for depth, part in enumerate(attribute.split(".")):
        if not hasattr(obj, part):
            owner = ".".join([module_name, *attribute.split(".")[:depth]])
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "name a function defined there."
            raise ConfigError(f"{where}: {owner!r} has no attribute {part!r}; {hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{where} is a {type(obj).__name__} ({obj!r:.60}), not callable; name a function "
                          "(or class) to call.")
    return obj


def call_factory(factory: Callable[..., Any], key: str, spec: str, args: tuple[Any, ...] = (),
                 kwargs: dict[str, Any] | None = None) -> Any:
    """``factory(*args, **kwargs)``; anything it raises becomes one ConfigError line naming ``key``."""
    kwargs = kwargs or {}
    try:
        return factory(*args, **kwargs)
    except ConfigError:
        raise
    except Exception as err:
        fix = f"fix the factory or {key}_args" if key.endswith(".factory") else f"fix {key}"
        raise ConfigError(f"{key} {spec!r} raised {_first_line(err)} when called with "
                          f"{_describe_call(args, kwargs)}; {fix}.") from None


def _describe_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    text = f"({', '.join(parts)})"
    return text if len(text) <= 120 else text[:117] + "...)"


def build_user_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """``cfg.factory(input_shape, num_classes, **cfg.factory_args)``, checked to be a ``torch.nn.Module``."""
    assert cfg.factory is not None  # callers dispatch on it
    build = import_object(cfg.factory, "model.factory")
    model = call_factory(build, "model.factory", cfg.factory, (tuple(input_shape), int(num_classes)),
                         dict(cfg.factory_args or {}))
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.factory {cfg.factory!r} returned a {type(model).__name__}, but "
                          "must return a torch.nn.Module (build(input_shape, num_classes, **factory_args) -> "
                          "nn.Module).")
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"model.factory {cfg.factory!r} returned a module without trainable parameters; "
                          "return the network to train.")
    return model


def resolve_loss(spec: str | None) -> LossFn:
    """The loss ``train.loss`` names (a class is instantiated), or cross-entropy when it is null."""
    if spec is None:
        return F.cross_entropy
    loss = import_object(spec, "train.loss")
    if isinstance(loss, type):
        if not issubclass(loss, nn.Module):
            raise ConfigError(f"train.loss {spec!r} is the class {loss.__name__}, not a function; name "
                              "a function loss(output, target) -> scalar, or a torch.nn.Module loss class.")
        loss = call_factory(loss, "train.loss", spec)
    return loss


def check_model_and_loss(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor,
                         num_classes: int, config: Config) -> None:
    """One forward pass and loss on a few examples (model in eval mode, so no random numbers are drawn and
    no BatchNorm statistics move): the output must be logits ``(N, num_classes)``, the loss one number
    that depends on the parameters."""
    spec = config.model.factory or f"model.name {config.model.name}"
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            try:
                output = model(x)
            except Exception as err:
                raise ConfigError(f"model.factory {spec!r}: its forward pass on a batch of shape "
                                  f"{tuple(x.shape)} raised {_first_line(err)}; make the model take inputs "
                                  "(N, *input_shape) as the data factory returns them.") from None
            if not isinstance(output, torch.Tensor) or output.shape != (x.shape[0], num_classes):
                got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise ConfigError(f"model.factory {spec!r}: the model returned {got} for a batch of "
                                  f"{x.shape[0]}, but must return logits of shape "
                                  f"({x.shape[0]}, {num_classes}) (batch, num_classes); accuracy is the "
                                  "argmax over classes.")
            name = config.train.loss or "cross-entropy"
            try:
                loss = loss_fn(output, y)
            except Exception as err:
                raise ConfigError(f"train.loss {name!r} raised {_first_line(err)} on logits "
                                  f"{tuple(output.shape)} and int64 labels {tuple(y.shape)}; make it "
                                  "loss(output, target).") from None
    finally:
        model.train(was_training)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        got = (f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor)
               else type(loss).__name__)
        raise ConfigError(f"train.loss {name!r} returned {got}, but must return a scalar tensor "
                          "(the batch mean); reduce it, e.g. loss.mean().")
    if not loss.requires_grad:
        raise ConfigError(f"train.loss {name!r} returned a loss that does not depend on the model "
                          "(no gradient); compute it from output with torch operations, not "
                          ".item() or numpy.")


def resolve_pythonpath(paths: Iterable[str], config_file: str | Path | None,
                       cwd: Path | None = None) -> list[str]:
    """``paths`` made absolute (against ``cwd``), then ``cwd`` and the folder of ``config_file``: what the
    command line puts in ``train.pythonpath`` so that trials import the user's code wherever they run."""
    cwd = (cwd or Path.cwd()).resolve()
    out = [str(p if (p := Path(s).expanduser()).is_absolute() else (cwd / p).resolve()) for s in paths]
    out.append(str(cwd))
    if config_file is not None:
        out.append(str(Path(config_file).expanduser().resolve().parent))
    return list(dict.fromkeys(out))


__all__ = ["KEYS", "LossFn", "uses_user_code", "workload_name",
           "use_pythonpath", "import_object", "call_factory", "build_user_model", "resolve_loss",
           "check_model_and_loss", "resolve_pythonpath"]
