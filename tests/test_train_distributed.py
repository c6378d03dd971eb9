"""Training on several processes (torchrun, DDP on gloo, 2 CPU processes) against one process.

The set of tuples of a step is a function of (seed, step) alone and the gradient is scaled to be
that of the mean loss whatever the number of processes (`softloc.train_ranks`), so a 2-process
run and a 1-process run with the same ``train.tuples_per_step`` train the same weights up to the
order of float additions, and a 2-process checkpoint resumes in one process.

Tolerance: every tensor within ``1e-4`` of its largest magnitude, logged losses within
``rtol=1e-6``. Only the summation order of the gradients differs (DDP's all-reduce against
one process's accumulation), about one float32 ulp per gradient; where the tuples' gradients
nearly cancel, the relative error of an entry grows (up to 50 % for the smallest entries of
Adam's first moment), and Adam, which normalises every update to about ``lr``, carries that
into the weights as a small share of ``lr`` per step. Measured with T = 3 over 2 processes
after 6 steps: 9e-7 of the largest weight, 8.5e-6 of the largest first moment, 3e-8 relative
in the loss. What the test must catch is far above that: a wrong gradient scale changes Adam's
first moment (``exp_avg``, proportional to the gradient) by 50 % or more, a wrong tuple the
loss of its step at once. (For N = T = 2 the scale factors are powers of two and the runs
agree bit for bit on this machine; the tests do not rely on it.)
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from softloc.checkpoints import list_checkpoints
from softloc.config import ConfigError
from softloc.distributed import DistributedError
from softloc.train import Trainer
from softloc.train_ranks import check_world, collective_step, gradient_scale, my_tuples
from tests.test_distributed import clean_env, torchrun, two_ranks_one_killed
from tests.tiny_run import MINING, SMALL, tiny_config

SHARE = 1e-4  # of a tensor's largest magnitude (see the module docstring)
LOSS_RTOL = 1e-6
# checkpoints every 10 steps and a validation every 10 (fewer probes: the tests stay short)
TWO_TUPLES = ["train.tuples_per_step=2", "train.checkpoint_every=10", "train.val_every=10"]


def sets(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        scale = float(b[key].abs().max()) if b[key].numel() else 0.0
        torch.testing.assert_close(a[key], b[key], rtol=0.0, atol=SHARE * scale + 1e-12,
                                   msg=key)


def logged_losses(run: Path) -> dict[str, float]:
    return {r["step"]: float(r["loss"]) for r in csv.DictReader((run / "train_log.csv").open())}


def step_file(run: Path, step: int, kind: str = "") -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step_{step:08d}{kind}.safetensors"))


# --- the rule, in one process ---------------------------------------------------------------------

@pytest.mark.parametrize("tuples,world", [(1, 1), (2, 2), (3, 2), (8, 3), (5, 5)])
def test_ranks_take_every_tuple_of_a_step_once(tuples: int, world: int) -> None:
    taken = [i for r in range(world) for i in my_tuples(tuples, world, r)]
    assert sorted(taken) == list(range(tuples))
    assert all(len(my_tuples(tuples, world, r)) >= 1 for r in range(world))


def test_the_scaled_gradients_averaged_over_ranks_are_the_gradient_of_the_mean_loss() -> None:
    """What DDP does (each rank's gradient of scale * its loss sum, averaged over the ranks),
    worked by hand on one linear layer for T = 3 tuples over N = 2 ranks (an uneven split)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 2)
    tuples = [torch.randn(5, 4) for _ in range(3)]

    def loss(x: torch.Tensor) -> torch.Tensor:
        return layer(x).square().mean()

    mean = torch.stack([loss(x) for x in tuples]).mean()
    expected = torch.autograd.grad(mean, layer.weight)[0]
    per_rank = []
    for r in range(2):
        local = sum(loss(tuples[i]) for i in my_tuples(3, 2, r)) * gradient_scale(3, 2)
        per_rank.append(torch.autograd.grad(local, layer.weight)[0])
    torch.testing.assert_close(sum(per_rank) / 2, expected)


def test_more_processes_than_tuples_or_batch_norm_is_refused_before_anything_is_written(
    street, tmp_path: Path, monkeypatch
) -> None:
    with pytest.raises(ConfigError, match=r"tuples_per_step=3 is less than the 4 processes"):
        check_world(3, 4)
    check_world(4, 4)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; refused before the group opens
    with pytest.raises(ConfigError, match=r"--set train.tuples_per_step=2"):
        Trainer(tiny_config(street.root), tmp_path / "run", progress=False).run()
    bn = tiny_config(street.root, "train.tuples_per_step=2", "model.name=resnet18_gem")
    with pytest.raises(DistributedError, match=r"BatchNorm layers"):
        Trainer(bn, tmp_path / "run", progress=False).run()
    assert not (tmp_path / "run").exists()


def test_batch_norm_is_refused_on_several_processes() -> None:
    """resnet18's BatchNorm running statistics would follow each rank's own tuples."""
    from softloc.models import create_model
    from softloc.train_ranks import check_no_batch_norm

    check_no_batch_norm(create_model("small_gem", image_size=(32, 24)))  # GroupNorm: fine
    with pytest.raises(DistributedError, match=r"BatchNorm layers \(backbone.*one process"):
        check_no_batch_norm(create_model("resnet18_gem", image_size=(32, 24)))


def test_a_failed_gradient_all_reduce_becomes_the_clear_error(monkeypatch) -> None:
    """DDP's own all-reduce (inside backward) fails with the backend's error when a peer is
    gone; the step says so as the other collectives do. Other errors pass unchanged."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(DistributedError, match=r"rank 1 of 2: train step 7 failed: another rank"):
        with collective_step(7):
            raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection "
                               "closed by peer [127.0.0.1]:29500")
    with pytest.raises(RuntimeError, match="^shapes differ$"):
        with collective_step(7):
            raise RuntimeError("shapes differ")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(RuntimeError, match="^.gloo. lost$"):
        with collective_step(7):
            raise RuntimeError("[gloo] lost")


def test_one_tuple_per_step_draws_the_tuple_of_seed_and_step(street, tmp_path: Path) -> None:
    """Tuple 0 of a step is the step's one tuple of before (from (seed, 2, step)); the others
    come from their own streams."""
    trainer = Trainer(tiny_config(street.root), tmp_path / "run", progress=False)
    anchors = trainer.anchors_for(4)
    zero = trainer._draw_tuple(4, anchors, None, 0)
    again = trainer.sampler.sample(np.random.default_rng([0, 2, 4]), anchors=anchors)
    assert np.array_equal(zero.indices, again.indices)
    others = [trainer._draw_tuple(4, anchors, None, i).indices for i in (1, 2)]
    assert not all(np.array_equal(zero.indices, o) for o in others)


# --- two processes --------------------------------------------------------------------------------

def test_two_process_training_equals_one_process_and_resumes_in_one(
    street, tmp_path: Path
) -> None:
    """A 2-process run of 20 steps: the same checkpoint (weights and optimizer state) as one
    process at step 20, only rank 0's files in the run folder, and it resumes in one process
    to 30 steps with the weights of an uninterrupted 1-process run of 30 steps."""
    two = tmp_path / "two"
    done = torchrun(["train", "--data", str(street.root), "--out", str(two), "--steps", "20",
                     *sets([*SMALL, *TWO_TUPLES])], clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("model: ") == 1  # one rank prints

    one = tmp_path / "one"
    Trainer(tiny_config(street.root, *TWO_TUPLES, "train.steps=30"), one, progress=False).run()

    assert_same_tensors(step_file(two, 20), step_file(one, 20))
    assert_same_tensors(step_file(two, 20, ".optim"), step_file(one, 20, ".optim"))
    assert_same_tensors(load_file(str(two / "model.safetensors")), step_file(one, 20))
    # rank 0 alone wrote: the files of a one-process run, one row per step in the log
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == [
        f"step_{s:08d}{kind}" for s in (10, 20)
        for kind in (".json", ".optim.safetensors", ".safetensors")]
    logged = [row["step"] for row in csv.DictReader((two / "train_log.csv").open())]
    assert logged == [str(s) for s in range(1, 21)]

    resumed = Trainer(tiny_config(street.root, *TWO_TUPLES, "train.steps=30"), two,
                      progress=False).run(resume=True)
    assert_same_tensors(load_file(str(resumed)), load_file(str(one / "model.safetensors")))
    losses, alone = logged_losses(two), logged_losses(one)
    assert losses.keys() == alone.keys() and len(losses) == 30
    assert np.allclose(list(losses.values()), list(alone.values()), rtol=LOSS_RTOL, atol=0)


def test_two_process_mining_gathers_the_cache_of_one_process(street, tmp_path: Path) -> None:
    """Mining on, 3 tuples a step over 2 processes (rank 0 takes two, rank 1 one): the cache of
    100 images (two extraction batches, one per rank), the losses, the optimizer state and the
    weights equal one process's."""
    mining = [*MINING, "mining.cache_size=100", "train.tuples_per_step=3", "train.val_every=0"]
    two = tmp_path / "two"
    done = torchrun(["train", "--data", str(street.root), "--out", str(two),
                     *sets([*SMALL, *mining])], clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    one = tmp_path / "one"
    Trainer(tiny_config(street.root, *mining), one, progress=False).run()
    state_two, state_one = step_file(two, 6, ".state"), step_file(one, 6, ".state")
    assert state_one["mining.descriptors"].shape[0] == 100
    assert torch.equal(state_two["mining.rows"], state_one["mining.rows"])
    assert torch.equal(state_two["mining.step"], state_one["mining.step"])
    assert_same_tensors(state_two, state_one)
    assert_same_tensors(step_file(two, 6, ".optim"), step_file(one, 6, ".optim"))
    assert_same_tensors(load_file(str(two / "model.safetensors")),
                        load_file(str(one / "model.safetensors")))
    losses, alone = logged_losses(two), logged_losses(one)
    assert losses.keys() == alone.keys() and len(losses) == 6
    assert np.allclose(list(losses.values()), list(alone.values()), rtol=LOSS_RTOL, atol=0)


COLLAPSE_SCRIPT = """
import json, sys
from pathlib import Path
root, out, repo = sys.argv[1:4]
sys.path.insert(0, repo)
from softloc import distributed
from softloc.train import Trainer
from tests.test_collapse import STOPPING, _collapse_after
from tests.tiny_run import tiny_config
trainer = Trainer(tiny_config(Path(root), *STOPPING, "train.tuples_per_step=2"), out,
                  progress=False)
_collapse_after(trainer, 4)  # on every rank: the models stay identical
path = trainer.run()
Path(out + f".rank{distributed.rank()}").write_text(str(path))
"""


def test_two_processes_stop_on_collapse_together(street, tmp_path: Path) -> None:
    """The collapse of the stopping test of tests/test_collapse.py, on 2 processes: both ranks
    take the verdict of the probe at step 8 and stop there (no rank waits for the other), and
    rank 0 keeps the weights of step 4, the last healthy probe, as one process does."""
    script = tmp_path / "collapse.py"
    script.write_text(COLLAPSE_SCRIPT)
    out = tmp_path / "run"
    repo = str(Path(__file__).resolve().parents[1])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(script), str(street.root), str(out), repo]
    done = subprocess.run(command, env=clean_env(), capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
    for r in (0, 1):
        assert (tmp_path / f"run.rank{r}").read_text() == str(out / "model.safetensors")
    steps = [int(row["step"]) for row in csv.DictReader((out / "train_log.csv").open())]
    assert steps[-1] == 8
    probes = list(csv.DictReader((out / "val_log.csv").open()))
    assert [int(row["step"]) for row in probes] == [0, 2, 4, 6, 8]
    assert [row["collapsed"] for row in probes] == ["0", "0", "0", "0", "1"]
    kept = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(kept[k], v) for k, v in step_file(out, 4).items())


def test_a_rank_killed_mid_run_stops_the_other_and_the_run_resumes(
    street, tmp_path: Path
) -> None:
    """Rank 1 dies (SIGKILL) in step 5, after the checkpoint of step 4: rank 0 stops with exit
    2 and a clear message within the timeout, no final model exists, and the run resumes (in
    one process) from step 4 to the end."""
    out = tmp_path / "run"
    code0, err0, code1, seconds = two_ranks_one_killed(
        ["train", "--data", str(street.root), "--out", str(out),
         *sets([*SMALL, "train.tuples_per_step=2", "train.val_every=0"])],
        "train step 5:rank1",  # after its backward, before the step's sum
    )
    assert code1 == -9
    assert code0 == 2, err0[-3000:]
    assert "softloc train: error: rank 0 of 2: train step 5 failed: another rank died" in err0
    assert seconds < 90
    assert not (out / "model.safetensors").exists() and not (out / "model.json").exists()
    assert list_checkpoints(out / "checkpoints")[-1].name == "step_00000004.safetensors"
    config = tiny_config(street.root, "train.tuples_per_step=2", "train.val_every=0")
    Trainer(config, out, progress=False).run(resume=True)
    assert (out / "model.safetensors").is_file()
    assert [r["step"] for r in csv.DictReader((out / "train_log.csv").open())] == [
        str(s) for s in range(1, 7)]
