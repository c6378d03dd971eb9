"""`softloc train` and `softloc check` against a careless user and a kill: every case gives
a clear error (exit code, the file, the fix) and leaves what existed before unchanged."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import softloc
from softloc.checkpoints import list_checkpoints
from softloc.cli import main
from softloc.config import load_config
from softloc.data.images import load_image, to_tensor
from softloc.kill_points import ENV_VAR
from softloc.models import load_model
from softloc.models.raw import thumbnail
from softloc.train import Trainer
from tests.tiny_run import SMALL

_SPEC = importlib.util.spec_from_file_location(
    "shared_fixture_makers", Path(__file__).parents[1] / "conftest.py"
)
_MAKERS = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_MAKERS)

# The shared tiny run with no step count of its own (each test gives --steps), no validation
# and one torch thread.
TINY = [
    *(o for o in SMALL
      if not o.startswith(("train.steps=", "train.val_every=", "train.val_queries="))),
    "train.val_every=0",
    "train.num_threads=1",
]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    _MAKERS.make_drive_table(root, {"reference": "overcast", "night": "night"}, length=90.0)
    return root


def _train_args(data: Path, out: Path, *extra: str, steps: int = 4, seed: int = 0) -> list[str]:
    args = ["-q", "train", "--data", str(data), "--out", str(out), "--steps", str(steps),
            "--seed", str(seed)]
    for override in TINY:
        args += ["--set", override]
    return [*args, *extra]


def _checksums(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _subprocess(args: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(softloc.__file__).parents[1])
    env.pop(ENV_VAR, None)
    if kill_at is not None:
        env[ENV_VAR] = kill_at
    return subprocess.run([sys.executable, "-m", "softloc", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def _line_of(csv_path: Path, image: str) -> int:
    """The 1-based line of places.csv that names ``image`` (read as plain text)."""
    for number, text in enumerate(csv_path.read_text().splitlines(), start=1):
        if text.split(",")[0] == image:
            return number
    raise AssertionError(f"{image} not in {csv_path}")


# --- BAD 1: a folder holding another run ---------------------------------------------------

def test_train_refuses_a_folder_that_holds_a_run(data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "runA"
    assert _run_cli(_train_args(data, out), capsys)[0] == 0
    before = _checksums(out)
    code, _, err = _run_cli(_train_args(data, out, seed=1), capsys)
    assert code == 2
    assert str(out) in err and "already holds a training run" in err
    assert "--resume" in err and "--overwrite" in err and "new folder" in err
    assert _checksums(out) == before


def test_trainer_api_refuses_too(data: Path, tmp_path: Path) -> None:
    from softloc.run_folder import RunFolderError

    config = load_config(None, [f"data.root={data}", *TINY, "train.steps=2"])
    Trainer(config, tmp_path / "run", progress=False).run()
    before = _checksums(tmp_path / "run")
    with pytest.raises(RunFolderError, match="already holds a training run"):
        Trainer(config, tmp_path / "run", progress=False).run()
    with pytest.raises(RunFolderError, match="not both"):
        Trainer(config, tmp_path / "run", progress=False).run(resume=True, overwrite=True)
    assert _checksums(tmp_path / "run") == before


def test_train_refuses_a_dataset_folder(data: Path, capsys) -> None:
    before = _checksums(data)
    code, _, err = _run_cli(_train_args(data, data), capsys)
    assert code == 2 and str(data) in err and "holds dataset" in err and "--out" in err
    assert _checksums(data) == before


def test_overwrite_replaces_the_old_run_entirely(data: Path, tmp_path: Path, capsys) -> None:
    out, fresh = tmp_path / "run", tmp_path / "fresh"
    assert _run_cli(_train_args(data, out, steps=6), capsys)[0] == 0
    assert _run_cli(_train_args(data, out, "--overwrite", seed=1), capsys)[0] == 0
    assert _run_cli(_train_args(data, fresh, seed=1), capsys)[0] == 0
    names = [p.name for p in list_checkpoints(out / "checkpoints")]
    assert names == ["step_00000002.safetensors", "step_00000004.safetensors"]  # no step 6
    replaced, expected = _checksums(out), _checksums(fresh)
    assert replaced.keys() == expected.keys()
    for name in expected:  # identical files; the training log differs only in its timings,
        if name.endswith(".optim.safetensors"):  # optimizer files in their metadata order
            a, b = load_file(str(out / name)), load_file(str(fresh / name))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        elif name != "train_log.csv":
            assert replaced[name] == expected[name], name
    logs = [[row.split(",")[:3] for row in (folder / "train_log.csv").read_text().splitlines()]
            for folder in (out, fresh)]
    assert logs[0] == logs[1] and len(logs[0]) == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]


def test_kill_after_overwrite_then_resume_gives_the_new_run(
    data: Path, tmp_path: Path, capsys
) -> None:
    """The old run has checkpoints 2, 4, 6; the new one is killed right after its step 2.
    The old step-6 checkpoint must not be there to outrank it, and --resume must finish the
    new run exactly as an uninterrupted one."""
    out, reference = tmp_path / "run", tmp_path / "reference"
    assert _run_cli(_train_args(data, out, steps=6), capsys)[0] == 0
    killed = _subprocess(_train_args(data, out, "--overwrite", seed=1), kill_at="checkpoint:2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_00000002.safetensors"]
    assert not (out / "model.safetensors").exists()
    assert load_config(out / "config.yaml").train.seed == 1

    assert _run_cli(_train_args(data, out, "--resume", seed=1), capsys)[0] == 0
    assert _run_cli(_train_args(data, reference, seed=1), capsys)[0] == 0
    resumed = load_file(str(out / "model.safetensors"))
    expected = load_file(str(reference / "model.safetensors"))
    assert resumed.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], rtol=0, atol=0)
    sidecar = json.loads((out / "model.json").read_text())
    assert sidecar["extra"]["config"]["train"]["seed"] == 1


class _Killed(BaseException):
    """Stands for SIGKILL in-process: no handler of softloc catches it."""


def test_kill_while_the_old_run_is_set_aside(
    data: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import softloc.run_folder

    def die(name: str) -> None:
        if name == "run-folder:set-aside":
            raise _Killed(name)

    out = tmp_path / "run"
    assert _run_cli(_train_args(data, out), capsys)[0] == 0
    monkeypatch.setattr(softloc.run_folder, "kill_point", die)
    with pytest.raises(_Killed):
        main(_train_args(data, out, "--overwrite", seed=1))
    assert not out.exists()  # the old run left in one rename; nothing of it remains in --out
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".run.replaced-")]
    assert len(leftovers) == 1
    monkeypatch.undo()
    assert _run_cli(_train_args(data, out, seed=1), capsys)[0] == 0  # a new run, no flag needed
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.replaced-")]


# --- BAD 2: --resume with another configuration --------------------------------------------

@pytest.mark.parametrize(
    ("extra", "key"),
    [
        (["--loss", "triplet"], "loss.name"),
        (["--set", "model.name=small_netvlad"], "model.name"),
        (["--set", "train.lr=0.01"], "train.lr"),
        (["--steps", "2"], "train.steps"),
    ],
)
def test_resume_refuses_a_config_that_changes_the_training(
    data: Path, tmp_path: Path, capsys, extra: list[str], key: str
) -> None:
    out = tmp_path / "run"
    assert _run_cli(_train_args(data, out), capsys)[0] == 0
    before = _checksums(out)
    args = _train_args(data, out, "--resume")
    if "--steps" in extra:
        args[args.index("--steps") + 1] = extra[1]
    else:
        args += extra
    code, _, err = _run_cli(args, capsys)
    assert code == 2
    assert str(out / "config.yaml") in err and key in err
    assert "new --out" in err and "--overwrite" in err
    if key == "train.steps":
        assert "fewer than the step of the last checkpoint, 4" in err
    assert _checksums(out) == before


def test_resume_allows_more_steps_and_harmless_keys(
    data: Path, tmp_path: Path, capsys, caplog
) -> None:
    out, reference = tmp_path / "run", tmp_path / "reference"
    assert _run_cli(_train_args(data, out), capsys)[0] == 0
    caplog.set_level("INFO", logger="softloc")
    args = _train_args(data, out, "--resume", "--set", "train.log_every=2", steps=6)
    assert _run_cli(args, capsys)[0] == 0
    assert "train.steps: 4 -> 6" in caplog.text and "train.log_every: 1 -> 2" in caplog.text
    assert load_config(out / "config.yaml").train.steps == 6
    assert _run_cli(_train_args(data, reference, steps=6), capsys)[0] == 0
    resumed = load_file(str(out / "model.safetensors"))
    expected = load_file(str(reference / "model.safetensors"))
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)
    assert json.loads((out / "model.json").read_text())["extra"]["step"] == 6


# --- BAD 15: the raw-pixel baseline from the command line -----------------------------------

def test_raw_pixels_baseline_from_the_cli(data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "raw"
    args = _train_args(data, out, "--loss", "off_the_shelf", "--set", "model.name=raw_pixels")
    code, stdout, _ = _run_cli(args, capsys)
    assert code == 0 and str(out / "model.safetensors") in stdout
    model, _ = load_model(out / "model.safetensors")
    assert not list(model.parameters())
    image = to_tensor(load_image(data / "images/reference/00010.png", (32, 24)))
    expected = thumbnail(image, (24, 32))  # the preset's grid, by the function itself
    torch.testing.assert_close(model(image), expected)


def test_raw_pixels_with_a_training_loss_is_refused(data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "raw"
    args = _train_args(data, out, "--loss", "triplet", "--set", "model.name=raw_pixels")
    code, _, err = _run_cli(args, capsys)
    assert code == 2 and "raw_pixels" in err and "no parameters" in err
    assert "--loss off_the_shelf" in err
    assert not out.exists()


# --- WEAK: configuration values -------------------------------------------------------------

def test_float_notations_are_numbers(data: Path, tmp_path: Path, capsys) -> None:
    preset = tmp_path / "mine.yaml"
    preset.write_text("train:\n  lr: 5e-5\n  weight_decay: 1E-6\n")
    assert load_config(preset).train.lr == 5e-5
    assert load_config(preset).train.weight_decay == 1e-6
    out = tmp_path / "run"
    code, _, _ = _run_cli(
        [*_train_args(data, out, steps=2), "--set", "train.lr=1e-4", "--config", str(preset)],
        capsys,
    )
    assert code == 0 and load_config(out / "config.yaml").train.lr == 1e-4


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.lr=.nan", "train.lr"),
        ("train.lr=.inf", "train.lr must be > 0 and finite"),
        ("train.lr=0", "train.lr must be > 0"),
        ("train.weight_decay=-1", "train.weight_decay must be a finite number >= 0"),
        ("train.num_threads=-3", "train.num_threads must be >= 0"),
        ("train.lr=fast", "expected a number"),
        ("train=5", "train is a section, not a value"),
    ],
)
def test_bad_values_name_the_override(
    data: Path, tmp_path: Path, capsys, override: str, expected: str
) -> None:
    out = tmp_path / "run"
    code, _, err = _run_cli([*_train_args(data, out), "--set", override], capsys)
    assert code == 2
    assert f"override {override!r}" in err and expected in err
    assert "demo.yaml" not in err
    assert not out.exists()


def test_a_bad_value_in_the_file_names_the_file(data: Path, tmp_path: Path, capsys) -> None:
    preset = tmp_path / "mine.yaml"
    preset.write_text("train:\n  lr_decay: fast\n")
    out = tmp_path / "run"
    code, _, err = _run_cli([*_train_args(data, out), "--config", str(preset)], capsys)
    assert code == 2 and err.count(str(preset)) == 1 and "train.lr_decay: expected a number" in err
    assert "override" not in err
    assert not out.exists()


# --- WEAK: a corrupt image in a hand-written dataset ----------------------------------------

def _break_images(data: Path) -> tuple[str, str]:
    """Truncate one training PNG and replace another by text; return their paths."""
    truncated, foreign = "images/reference/00005.png", "images/night/00020.png"
    blob = (data / truncated).read_bytes()
    (data / truncated).write_bytes(blob[: len(blob) // 2])
    (data / foreign).write_text("not an image")
    return truncated, foreign


def test_check_lists_bad_images_with_their_lines(data: Path, capsys) -> None:
    code, stdout, _ = _run_cli(["check", "--data", str(data)], capsys)
    assert code == 0 and "decode" in stdout
    truncated, foreign = _break_images(data)
    before = _checksums(data)
    code, stdout, _ = _run_cli(["check", "--data", str(data)], capsys)
    assert code == 1
    for image in (truncated, foreign):
        assert f"line {_line_of(data / 'places.csv', image)}: {image}:" in stdout
    assert "2 of" in stdout and "drop their rows" in stdout
    assert _checksums(data) == before


def test_training_stops_before_step_one_on_a_bad_image(
    data: Path, tmp_path: Path, capsys
) -> None:
    truncated, foreign = _break_images(data)
    out = tmp_path / "run"
    code, _, err = _run_cli(_train_args(data, out), capsys)
    assert code == 2 and "training did not start" in err
    assert str(data / "places.csv") in err and "softloc check" in err
    for image in (truncated, foreign):
        assert f"line {_line_of(data / 'places.csv', image)}: {image}:" in err
    assert not out.exists()


def test_an_image_error_during_training_names_the_line(
    data: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image that passes the start-up check but fails later still names its line."""
    monkeypatch.setattr(Trainer, "check_images", lambda self: None)
    for image in (data / "images" / "reference").iterdir():  # every anchor is broken
        image.write_bytes(image.read_bytes()[:60])
    code, _, err = _run_cli(_train_args(data, tmp_path / "run"), capsys)
    assert code == 2
    found = re.search(rf"{re.escape(str(data / 'places.csv'))}, line (\d+): "
                      rf"{re.escape(str(data))}/(images/reference/\d+\.png): cannot decode", err)
    assert found, err
    assert int(found.group(1)) == _line_of(data / "places.csv", found.group(2))


# --- WEAK: misleading model-path messages ---------------------------------------------------

def test_model_paths_that_are_not_model_files(data: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "runA"
    assert _run_cli(_train_args(data, run, steps=2), capsys)[0] == 0
    code, _, err = _run_cli(["map", "build", "--model", str(run), "--data", str(data),
                             "--out", str(tmp_path / "map")], capsys)
    assert code == 2 and "is a folder, not a model file" in err
    assert str(run / "model.safetensors") in err and "runA.json" not in err
    pth = tmp_path / "x.pth"
    pth.write_bytes(b"\x80\x02torch")
    code, _, err = _run_cli(["map", "build", "--model", str(pth), "--data", str(data),
                             "--out", str(tmp_path / "map")], capsys)
    assert code == 2 and str(pth) in err and "not a softloc model file" in err
    assert ".safetensors with a NAME.json sidecar" in err and "x.safetensors" not in err
    assert pth.read_bytes() == b"\x80\x02torch"


# --- WEAK: Ctrl-C and write errors in cli.main ----------------------------------------------

def test_ctrl_c_is_one_line_and_exit_130(
    data: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C raises KeyboardInterrupt in the main thread; here at step 3, after the step-2
    checkpoint."""
    original = Trainer.train_step

    def interrupted(self, model, optimizer, step):
        if step == 3:
            raise KeyboardInterrupt
        return original(self, model, optimizer, step)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    out = tmp_path / "run"
    code, _, err = _run_cli(_train_args(data, out, steps=6), capsys)
    assert code == 130
    assert err.strip().splitlines() == [
        "softloc train: interrupted (the last checkpoint is kept: rerun with --resume)"
    ]
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_00000002.safetensors"]


def test_a_write_error_is_exit_2_with_the_path(
    data: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import softloc.train

    target = tmp_path / "run" / "config.yaml"

    def full_disk(config, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(softloc.train, "save_config", full_disk)
    code, _, err = _run_cli(_train_args(data, tmp_path / "run"), capsys)
    assert code == 2
    assert err.strip() == (
        f"softloc train: error: {target}: {os.strerror(errno.ENOSPC)}; free space on that disk "
        "(what was complete before is kept)"
    )


def test_header_check_judges_jpegs_by_their_end(data: Path) -> None:
    from PIL import Image

    from softloc.check import header_check
    from softloc.data.places import read_places

    places = read_places(data)
    good, cut, padded = (data / "images/reference/00001.png", data / "images/reference/00002.png",
                         data / "images/reference/00003.png")
    for path in (good, cut, padded):  # JPEG bytes under the table's names
        Image.fromarray(load_image(path)).save(path, format="JPEG")
    blob = cut.read_bytes()
    cut.write_bytes(blob[: len(blob) - 200])  # truncated: no end marker, and it fails to decode
    padded.write_bytes(padded.read_bytes() + b"\0" * 4096)  # trailing bytes: decodes fine
    problems = header_check(places, rows=range(1, 4))
    assert [p.path for p in problems] == ["images/reference/00002.png"]
    assert problems[0].line == _line_of(data / "places.csv", "images/reference/00002.png")


def test_resume_from_a_moved_dataset(data: Path, tmp_path: Path, capsys, caplog) -> None:
    import shutil

    out = tmp_path / "run"
    assert _run_cli(_train_args(data, out), capsys)[0] == 0
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    caplog.set_level("INFO", logger="softloc")
    assert _run_cli(_train_args(moved, out, "--resume", steps=6), capsys)[0] == 0
    assert "data.root" in caplog.text and "the same places.csv" in caplog.text
    other = tmp_path / "other"
    _MAKERS.make_drive_table(other, {"reference": "overcast", "night": "night"}, length=80.0)
    before = _checksums(out)
    code, _, err = _run_cli(_train_args(other, out, "--resume", steps=8), capsys)
    assert code == 2 and "data.root" in err and str(out / "config.yaml") in err
    assert _checksums(out) == before
