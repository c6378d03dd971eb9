"""`softloc serve` as a process: binds 127.0.0.1, answers, and stops when told (bounded)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from softloc.localize import build_map
from softloc.models import create_model, save_model


def test_serve_answers_on_loopback_and_stops(street, tmp_path: Path) -> None:
    model = save_model(create_model("small_gem", image_size=(32, 24)), tmp_path / "m.safetensors")
    map_dir = build_map(model, street, tmp_path / "map", progress=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    src = str(Path(__file__).parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, "-m", "softloc", "-q", "serve", "--map", str(map_dir), "--port",
         str(port), "--token", "t0k"], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the server did not start within 60 s"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        image = (street.root / street.path[85]).read_bytes()
        files = {"image": ("q.png", image, "image/png")}
        assert httpx.post(f"{url}/localize", files=files, timeout=30).status_code == 401
        answer = httpx.post(f"{url}/localize", files=files, timeout=30,
                            headers={"Authorization": "Bearer t0k"})
        assert answer.status_code == 200 and answer.json()[0]["image"] == "q.png"
    finally:
        process.terminate()
        process.wait(30)
