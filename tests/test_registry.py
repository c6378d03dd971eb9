from __future__ import annotations

import pytest

from softloc.registry import Registry


def test_register_create_and_errors() -> None:
    shapes: Registry = Registry("shape")

    @shapes.register("square")
    def square(side: float = 1.0) -> float:
        return side * side

    assert shapes.names() == ["square"] and "square" in shapes
    assert shapes.create("square", side=3.0) == 9.0
    with pytest.raises(ValueError, match="unknown shape 'circle'; known shapes: square"):
        shapes.create("circle")
    with pytest.raises(ValueError, match="bad arguments for shape 'square'.*accepts: side"):
        shapes.create("square", radius=2)
    with pytest.raises(ValueError, match="already registered to square"):
        shapes.register("square")(lambda: 0)
    with pytest.raises(ValueError, match="non-empty string"):
        shapes.register("")
