"""``trainable:`` names -> Ray Tune function trainables.

A built-in name (``classifier``) or an import path ``package.module:function`` to any
Ray Tune function trainable (one that calls ``ray.tune.report``).
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Callable

from raytune_suite.errors import SpecError

BUILTIN: dict[str, str] = {
    "classifier": "raytune_suite.trainables:train_classifier",
}
# The module each built-in trains with (torch and all), imported where trials run: Ray's
# embedded workers load it as they start (``engine.tuner.worker_preloads``); the driver
# never needs it.
BUILTIN_MODULES: dict[str, str] = {
    "classifier": "raytune_suite.training.trainable",
}


def train_classifier(config: dict, checkpoint_every: int = 1, data=None) -> None:
    """The built-in ``classifier`` (``training.trainable.train_classifier``), named here so
    that the driver can hand it to Ray Tune without importing torch (2 to 5 s of a
    2-core machine, at the moment its workers import torch too)."""
    from raytune_suite.training.trainable import train_classifier as train

    train(config, checkpoint_every=checkpoint_every, data=data)


def resolve_trainable(name: str) -> Callable:
    """Import the function a ``trainable:`` value names.

    Raises:
        SpecError: unknown built-in, unimportable module, missing or non-callable function.
    """
    target = BUILTIN.get(name, name)
    module_name, sep, func_name = target.partition(":")
    if not sep or not module_name or not func_name:
        raise SpecError("trainable", f"must be a built-in ({', '.join(BUILTIN)}) or "
                                     "'package.module:function'", name)
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # like `python -m`: modules beside the file
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's to fix
        raise SpecError("trainable", f"must name an importable module "
                                     f"({type(e).__name__}: {e})", name) from None
    func = getattr(module, func_name, None)
    if func is None:
        raise SpecError("trainable", f"module {module_name} has no function {func_name!r}", name)
    if not callable(func):
        raise SpecError("trainable", f"{func_name} must be a function", name)
    try:
        params = [p for p in inspect.signature(func).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = [None]
    if not params:
        raise SpecError("trainable", "must accept the trial's config as its first argument", name)
    if name not in BUILTIN:
        _ship_by_value(module)
    return func


def is_class_trainable(fn) -> bool:
    """A ``ray.tune.Trainable`` subclass (as opposed to a function trainable)."""
    if not isinstance(fn, type):
        return False
    from ray.tune import Trainable

    return issubclass(fn, Trainable)


def obeys_checkpoint_every(name: str) -> bool:
    """Whether ``checkpoint.every`` decides when this trainable checkpoints: the built-in
    trainable takes it as an argument and Ray drives a class trainable's checkpoints
    (``checkpoint_frequency``); a function trainable decides for itself."""
    return name in BUILTIN or is_class_trainable(resolve_trainable(name))


def _ship_by_value(module) -> None:
    """Pickle a user's trainable by value, so workers need not import its module.

    A module outside site-packages (a file in the user's project) is usually not on the
    workers' ``sys.path``, on a cluster least of all.
    """
    path = getattr(module, "__file__", None) or ""
    if "site-packages" in path or "dist-packages" in path:
        return
    import ray.cloudpickle as cloudpickle

    cloudpickle.register_pickle_by_value(module)
