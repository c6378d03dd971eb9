"""Name-keyed registries of losses and influence functions (timm style).

A loss or influence class registers itself with a decorator in its own module::

    @register_loss("soft_contrastive")
    class SoftContrastiveLoss(nn.Module): ...

and is then built by name, e.g. from a configuration file::

    loss = create_loss("soft_contrastive", alpha=2.0, influence=create_influence("linear"))

The tables are filled once, when :mod:`softloc.losses` is imported (importing this module
imports the package first, so every loss of the package is registered before any look-up).
Registering a name twice is an error, so two modules can never silently replace each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from softloc.registry import Registry

_ClassT = TypeVar("_ClassT", bound=type)

LOSSES: Registry[type] = Registry("loss")
INFLUENCES: Registry[type] = Registry("influence function")

#: ``from_config`` of the losses that split a tuple into near and far images by the radii.
TUPLE_RADII: dict[str, str] = {
    "near_radius": "tuples.near_radius",
    "far_radius": "tuples.far_radius",
}


def register_loss(name: str) -> Callable[[_ClassT], _ClassT]:
    """Class decorator registering a loss module under ``name``.

    Args:
        name: the name :func:`create_loss` will accept, e.g. ``"soft_contrastive"``.

    Raises:
        ValueError: if ``name`` is empty or already taken.
    """
    return LOSSES.register(name)


def register_influence(name: str) -> Callable[[_ClassT], _ClassT]:
    """Class decorator registering an influence function under ``name``.

    Args:
        name: the name :func:`create_influence` will accept, e.g. ``"sigmoid"``.

    Raises:
        ValueError: if ``name`` is empty or already taken.
    """
    return INFLUENCES.register(name)


def create_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered loss by name.

    Args:
        name: one of :func:`available_losses`.
        **kwargs: constructor arguments of that loss (see docs/losses.md).

    Returns:
        The loss module, called as ``loss(descriptors (B, D), distances (B, B) metres)``.

    Raises:
        ValueError: for an unknown name (the message lists the known ones) or bad arguments.
    """
    return LOSSES.create(name, **kwargs)


def create_influence(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered influence function by name.

    Args:
        name: one of :func:`available_influences` (``sigmoid``, ``linear``, ``tanh``, ``step``).
        **kwargs: constructor arguments, e.g. ``steepness=0.8, midpoint=15.0`` for sigmoid.

    Returns:
        A module mapping distances in metres to ``(w_near, w_far)``.

    Raises:
        ValueError: for an unknown name (the message lists the known ones) or bad arguments.
    """
    return INFLUENCES.create(name, **kwargs)


def available_losses() -> list[str]:
    """Names accepted by :func:`create_loss`, sorted."""
    return LOSSES.names()


def available_influences() -> list[str]:
    """Names accepted by :func:`create_influence`, sorted."""
    return INFLUENCES.names()


def loss_options_from_config(name: str, config: Any) -> dict[str, Any]:
    """Constructor arguments of loss ``name`` that come from the run configuration.

    A loss declares what it needs in a class attribute ``from_config``: a mapping of its
    constructor arguments to dotted paths in the configuration (e.g. ``{"near_radius":
    "tuples.near_radius"}``). The loss's own ``loss.options`` override these.

    Raises:
        ValueError: unknown loss name, or a path the configuration does not have.
    """
    factory = LOSSES.get(name)
    options: dict[str, Any] = {}
    for argument, path in getattr(factory, "from_config", {}).items():
        node = config
        for part in path.split("."):
            if not hasattr(node, part):
                raise ValueError(f"loss {name!r} needs config value {path!r}, which is missing")
            node = getattr(node, part)
        options[argument] = node
    return options


def loss_trains(name: str) -> bool:
    """Whether loss ``name`` trains the network (``off_the_shelf`` does not)."""
    return bool(getattr(LOSSES.get(name), "trains", True))
