"""`softloc serve`'s app through FastAPI's TestClient: every endpoint and every bad input."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import softloc
from softloc.cli import main
from softloc.localize import build_map
from softloc.models import create_model, save_model
from softloc.serve import create_app


@pytest.fixture
def street_map(street, tmp_path: Path) -> Path:
    model = save_model(create_model("small_gem", image_size=(32, 24)), tmp_path / "m.safetensors")
    return build_map(model, street, tmp_path / "map", progress=False)


@pytest.fixture
def client(street_map: Path) -> TestClient:
    return TestClient(create_app(street_map, k=3))


def png_bytes(path: Path) -> bytes:
    return path.read_bytes()


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def test_localize_answers_what_the_cli_prints(street, street_map: Path, client: TestClient,
                                             capsys) -> None:
    paths = [street.root / street.path[i] for i in (3, 40)]
    assert main(["-q", "localize", "--map", str(street_map), "--top-k", "3", "--format",
                 "json", *map(str, paths)]) == 0
    expected = json.loads(capsys.readouterr().out)
    one = client.post("/localize", files={"image": ("a.png", png_bytes(paths[0]), "image/png")})
    assert one.status_code == 200, one.text
    several = client.post("/localize", files=[
        ("images", (p.name, png_bytes(p), "image/png")) for p in paths])
    assert several.status_code == 200, several.text
    got = several.json()
    assert one.json()[0]["image"] == "a.png"
    for fix, want in zip([one.json()[0], *got], [expected[0], *expected], strict=True):
        assert_same_fix(fix, want)


def assert_same_fix(fix: dict, want: dict) -> None:
    """Same keys, references and pose; float32 distances equal up to batch-size noise."""
    assert set(fix) == set(want)
    assert [(r["path"], r["x"], r["y"]) for r in fix["top_k"]] == [
        (r["path"], r["x"], r["y"]) for r in want["top_k"]]
    assert [r["distance"] for r in fix["top_k"]] == pytest.approx(
        [r["distance"] for r in want["top_k"]], abs=1e-5)
    assert (fix["x"], fix["y"], fix["yaw"]) == (want["x"], want["y"], want["yaw"])
    assert fix["confidence"] == pytest.approx(want["confidence"], abs=1e-5)


def test_health_and_map_describe_the_served_map(street_map: Path, client: TestClient) -> None:
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/map").json()
    manifest = json.loads((street_map / "manifest.json").read_text())
    the_map = softloc.Map.open(street_map)
    assert info["references"] == len(the_map) == manifest["count"]
    assert info["dim"] == manifest["dim"] and info["index"] == manifest["index"]["kind"]
    assert info["created"] == manifest["created"] and info["model"] == manifest["model"]
    assert client.get("/openapi.json").json()["paths"].keys() >= {
        "/localize", "/localize/sequence", "/health", "/map"}


def test_bad_uploads_get_4xx_json_and_the_server_keeps_answering(street, street_map: Path
                                                                 ) -> None:
    client = TestClient(create_app(street_map, k=3, max_upload_mb=0.05, max_images=3))
    good = png_bytes(street.root / street.path[0])
    cases = {
        "not an image": (400, dict(files={"image": ("x.png", b"hello, not a png", "image/png")})),
        "empty": (400, dict(files={"image": ("x.png", b"", "image/png")})),
        "text part type": (415, dict(files={"image": ("x.txt", good, "text/plain")})),
        "json body": (415, dict(json={"image": "x.png"})),
        "no image field": (400, dict(files={"photo": ("x.png", good, "image/png")})),
        "image as text": (400, dict(data={"image": "x.png"}, files={"other": ("a", b"1")})),
        "too many": (413, dict(files=[("images", (f"{i}.png", good, "image/png"))
                                      for i in range(4)])),
        "bomb header": (413, dict(files={"image": ("b.png", bomb_png(100_000, 100_000),
                                                   "image/png")})),
        "too large": (413, dict(files={"image": ("big.png", good + b"\0" * 60_000,
                                                 "image/png")})),
        "truncated": (400, dict(files={"image": ("t.png", good[: len(good) // 2],
                                                 "image/png")})),
    }
    for case, (status, request) in cases.items():
        answer = client.post("/localize", **request)
        assert answer.status_code == status, (case, answer.text)
        assert answer.headers["content-type"] == "application/json", case
        assert answer.json()["error"], case
        assert client.get("/health").status_code == 200
    ok = client.post("/localize", files={"image": ("g.png", good, "image/png")})
    assert ok.status_code == 200 and len(ok.json()) == 1


def test_a_chunked_body_over_the_limit_is_refused(street, street_map: Path) -> None:
    client = TestClient(create_app(street_map, max_upload_mb=0.01))
    boundary = "softlocboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n").encode()
    body += b"\0" * 40_000 + f"\r\n--{boundary}--\r\n".encode()

    def chunks():  # no Content-Length: the guard must count the bytes as they come
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    answer = client.post("/localize", content=chunks(),
                         headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert answer.status_code == 413 and "max-upload-mb" in answer.json()["error"]


def test_pixel_limit_is_the_services_own(street, street_map: Path) -> None:
    client = TestClient(create_app(street_map, max_pixels=500))
    image = Image.new("RGB", (40, 30), (10, 20, 30))  # 1200 pixels > 500
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    answer = client.post("/localize", files={"image": ("i.png", buffer.getvalue(), "image/png")})
    assert answer.status_code == 413 and "1200 pixels" in answer.json()["error"]


def test_token_guards_everything_but_health(street, street_map: Path) -> None:
    client = TestClient(create_app(street_map, token="s3cret"))
    good = png_bytes(street.root / street.path[0])
    files = {"image": ("g.png", good, "image/png")}
    assert client.get("/health").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        assert client.get("/map", headers=headers).status_code == 401
        answer = client.post("/localize", files=files, headers=headers)
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
    auth = {"Authorization": "Bearer s3cret"}
    assert client.get("/map", headers=auth).status_code == 200
    assert client.post("/localize", files=files, headers=auth).status_code == 200


def sequence_files(street, rows) -> list:
    return [("images", (f"f{i}.png", png_bytes(street.root / street.path[r]), "image/png"))
            for i, r in enumerate(rows)]


def test_sequence_in_pieces_equals_the_whole_sequence(street, street_map: Path,
                                                      client: TestClient) -> None:
    night = np.flatnonzero(street.traversal == "night")[10:22]
    stamps = [float(street.timestamp[r]) for r in night]
    stamps[6:] = [s + 50.0 for s in stamps[6:]]  # a gap over max_gap: the filter restarts
    localizer = softloc.Localizer(street_map, k=3)
    expected = localizer.localize_sequence(
        [street.root / street.path[r] for r in night], stamps)
    whole = client.post("/localize/sequence", files=sequence_files(street, night),
                        data={"timestamps": ",".join(map(str, stamps))})
    assert whole.status_code == 200, whole.text
    pieces = []
    for part in (slice(0, 4), slice(4, 5), slice(5, 12)):
        answer = client.post("/localize/sequence", files=sequence_files(street, night[part]),
                             data={"session": "car-1",
                                   "timestamps": [str(s) for s in stamps[part]]})
        assert answer.status_code == 200, answer.text
        pieces += answer.json()
    for want, a, b in zip(expected, whole.json(), pieces, strict=True):
        assert_same_fix(a, {**want.to_dict(), "image": a["image"]})
        assert_same_fix(b, {**want.to_dict(), "image": b["image"]})


def test_sessions_expire_and_bad_sequence_input_is_refused(street, street_map: Path) -> None:
    now = [0.0]
    client = TestClient(create_app(street_map, k=3, session_expiry_s=60, clock=lambda: now[0]))
    files = sequence_files(street, [5])
    assert client.post("/localize/sequence", files=files, data={"session": "s"}).status_code == 200
    assert len(client.app.state.sessions) == 1
    now[0] = 61.0
    assert len(client.app.state.sessions) == 0
    bad = [
        dict(files=sequence_files(street, [5, 6]), data={"timestamps": "1"}),
        dict(files=sequence_files(street, [5]), data={"timestamps": "soon"}),
        dict(files=sequence_files(street, [5]), data={"timestamps": "nan"}),
        dict(files=sequence_files(street, [5]), data={"session": "x" * 200}),
    ]
    for request in bad:
        answer = client.post("/localize/sequence", **request)
        assert answer.status_code == 400 and answer.json()["error"], answer.text


def test_cli_serve_refuses_a_missing_map_before_binding(tmp_path: Path, capsys) -> None:
    assert main(["serve", "--map", str(tmp_path / "nowhere"), "--port", "0"]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_a_bad_image_is_named_before_bad_sequence_fields(street, client: TestClient) -> None:
    """The images are checked first (as when they were decoded before the fields were read):
    a request wrong in both is refused for its image, with the image's own status."""
    good = ("images", ("f0.png", png_bytes(street.root / street.path[5]), "image/png"))
    bad_fields = {"timestamps": "soon", "session": "x" * 200}
    cases = [
        (("images", ("broken.png", b"not a png", "image/png")), 400, "broken.png"),
        (("images", ("notes.txt", b"hello", "text/plain")), 415, "notes.txt"),
        (("images", ("empty.png", b"", "image/png")), 400, "empty.png"),
    ]
    for part, status, name in cases:
        answer = client.post("/localize/sequence", files=[good, part], data=bad_fields)
        assert answer.status_code == status, answer.text
        assert name in answer.json()["error"]
    answer = client.post("/localize/sequence", files=[good], data=bad_fields)
    assert answer.status_code == 400 and "timestamps" in answer.json()["error"]
    assert client.get("/health").status_code == 200
