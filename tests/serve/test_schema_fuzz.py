"""Schemathesis against the service's OpenAPI schema: generated requests, bounded in number;
no answer may be a 5xx. Skipped where schemathesis is not installed (it is in the `test`
extra)."""

from __future__ import annotations

from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402

from softloc.localize import build_map  # noqa: E402
from softloc.models import create_model, save_model  # noqa: E402
from softloc.serve import create_app  # noqa: E402


def test_no_generated_request_gets_a_server_error(street, tmp_path: Path) -> None:
    model = save_model(create_model("small_gem", image_size=(32, 24)), tmp_path / "m.safetensors")
    app = create_app(build_map(model, street, tmp_path / "map", progress=False),
                     max_upload_mb=1, max_images=4)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    answered: dict[str, set[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck), database=None)
        def check(case) -> None:
            response = case.call()
            answered.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)
            assert response.status_code < 500, (case.method, case.path, response.text)
            if response.status_code >= 400:
                assert response.json()["error"]

        check()
    assert set(answered) == {"GET /health", "GET /map", "POST /localize",
                             "POST /localize/sequence"}
