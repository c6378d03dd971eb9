"""Name-keyed registries: a component registers itself once, configurations build it by name.

One mechanism serves backbones, poolings, losses and influence functions (timm style)::

    POOLINGS = Registry("pooling")

    @POOLINGS.register("gem")
    class GeM(nn.Module): ...

    POOLINGS.create("gem", dim=512, p=3.0)

Tables are filled when their package is imported and only read afterwards. Registering a
name twice is an error, so two modules can never silently replace each other.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T", bound=Callable[..., Any])


class Registry(Generic[T]):
    """Factories (classes or functions) by name, for one kind of component.

    Args:
        kind: what is registered, used in error messages (e.g. ``"loss"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._table: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding a factory under ``name``.

        Raises:
            ValueError: ``name`` is empty or already taken.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} must be registered under a non-empty string, "
                             f"got {name!r}")

        def decorator(factory: T) -> T:
            if name in self._table:
                taken = getattr(self._table[name], "__name__", repr(self._table[name]))
                raise ValueError(
                    f"{self.kind} name {name!r} is already registered to {taken}; register "
                    f"{getattr(factory, '__name__', repr(factory))} under another name"
                )
            self._table[name] = factory
            return factory

        return decorator

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._table)

    def __contains__(self, name: object) -> bool:
        return name in self._table

    def get(self, name: str) -> T:
        """The factory registered as ``name``.

        Raises:
            ValueError: unknown name; the message lists the known ones.
        """
        if name not in self._table:
            raise ValueError(
                f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}"
            )
        return self._table[name]

    def create(self, name: str, **kwargs: Any) -> Any:
        """Call the factory registered as ``name`` with ``kwargs``.

        Raises:
            ValueError: unknown name, or arguments the factory does not accept (the message
                lists the ones it does).
        """
        factory = self.get(name)
        signature = inspect.signature(factory)
        try:
            signature.bind(**kwargs)
        except TypeError as error:
            accepted = ", ".join(signature.parameters)
            raise ValueError(
                f"bad arguments for {self.kind} {name!r} ({error}); it accepts: {accepted}"
            ) from error
        return factory(**kwargs)
