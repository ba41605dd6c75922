"""Which framework a command needs, checked before it does anything.

``gpt2 train --framework flax`` or ``gpt2 convert --to keras`` without that framework installed
must fail at once with one line naming the extra to install -- not with a
``ModuleNotFoundError`` traceback half-way through, and without writing anything.

Example:
    >>> from conversion.frameworks import require
    >>> require("torch", "gpt2 train --framework torch")   # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util

#: framework -> (modules it needs, what users call it, the gpt2-zoo extra that installs it)
FRAMEWORKS = {
    "torch": (("torch",), "PyTorch", "torch"),
    "tf": (("tensorflow", "keras"), "TensorFlow/Keras", "tf"),
    "flax": (("jax", "flax", "optax"), "JAX/Flax", "flax"),
}


class MissingFrameworkError(RuntimeError):
    """A command needs a framework that is not installed."""


def installed(framework: str) -> bool:
    """Whether ``framework``'s packages can be imported (found, not imported: cheap)."""
    modules = FRAMEWORKS[framework][0]
    return all(importlib.util.find_spec(m) is not None for m in modules)


def require(framework: str, what: str) -> None:
    """Raise :class:`MissingFrameworkError` naming the extra when ``framework`` is missing."""
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; use one of {', '.join(FRAMEWORKS)}")
    modules, label, extra = FRAMEWORKS[framework]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingFrameworkError(
            f"{what} needs {label} ({', '.join(missing)} is not installed): "
            f"pip install 'gpt2-zoo[{extra}]'"
        )
