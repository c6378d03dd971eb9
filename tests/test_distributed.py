"""Several processes (torchrun, gloo on 2 CPU processes) against one: the same numbers.

The multi-process tests start real processes: ``python -m torch.distributed.run`` for a launch as
users run it, and two hand-started ranks for the failure test (so that rank 0's own reaction to
a dead peer is seen, not the launcher's clean-up).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from softloc import distributed
from softloc.evaluation.protocol import evaluate_maps
from softloc.kill_points import ENV_VAR as KILL_ENV
from softloc.localize import build_map
from softloc.mapping import Map
from softloc.models import create_model, save_model

_SPEC = importlib.util.spec_from_file_location("shared_fixture_makers",
                                               Path(__file__).parent / "conftest.py")
_MAKERS = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_MAKERS)
make_drive_table = _MAKERS.make_drive_table

SRC = str(Path(distributed.__file__).resolve().parents[1])
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
               "MASTER_PORT", "GROUP_RANK", "TORCHELASTIC_RUN_ID")


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any launcher variables, softloc's sources first."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and k != KILL_ENV}
    env["PYTHONPATH"] = os.pathsep.join([SRC, env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return {**env, **extra}


def torchrun(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "-m", "softloc", "-q", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def long_street(tmp_path: Path):
    """80 night queries (two batches of 64: one per rank) beside a reference drive."""
    return make_drive_table(tmp_path / "data", {"reference": "overcast", "night": "night"},
                            spacing=0.25, size=(16, 12))


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    return save_model(create_model("small_gem", image_size=(16, 12)), tmp_path / "m.safetensors")


# --- one process: no distributed code path -----------------------------------------------------

def test_plain_run_is_one_process_and_opens_no_group(monkeypatch) -> None:
    import torch.distributed as dist

    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    rows = np.arange(12.0).reshape(6, 2)
    assert distributed.gather_rows(rows) is rows
    assert distributed.init_process_group() is False
    distributed.barrier()
    assert not dist.is_initialized()


def test_a_launch_without_its_rendezvous_is_refused(monkeypatch) -> None:
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(distributed.DistributedError, match="MASTER_ADDR, MASTER_PORT unset"):
        distributed.init_process_group()


@pytest.mark.parametrize("count,batch,ranks", [(130, 64, 2), (10, 4, 3), (5, 8, 2), (0, 4, 2)])
def test_shards_are_whole_batches_in_row_order(count: int, batch: int, ranks: int) -> None:
    rows = np.arange(100, 100 + count)
    shards = [distributed.shard_rows(rows, batch, ranks, r) for r in range(ranks)]
    assert np.array_equal(np.concatenate(shards), rows)
    # each shard starts on a batch boundary of the single-process run, so batches are the same
    starts = np.cumsum([0] + [len(s) for s in shards[:-1]])
    assert all(start % batch == 0 for start in starts)
    batches = [-(-len(s) // batch) for s in shards]
    assert max(batches) - min(batches) <= 1


# --- two processes --------------------------------------------------------------------------------

GATHER_SCRIPT = """
import json, sys
import numpy as np
from softloc import distributed
r = distributed.rank()
local = np.arange(3 * (3 - 2 * r), dtype=np.float32).reshape(-1, 3) + 100 * r  # 3 rows, 1 row
every = distributed.gather_rows(local, step="t")
main = distributed.gather_rows(local.astype(np.float16), step="t2", main_only=True)
try:  # rows of another width on rank 1: both ranks refuse, neither waits forever
    distributed.gather_rows(np.zeros((2, 3 + r), dtype=np.float32), step="bad")
    refused = ""
except distributed.DistributedError as error:
    refused = str(error)
json.dump({"every": every.tolist(), "main": None if main is None else main.tolist(),
           "dtype": None if main is None else str(main.dtype), "refused": refused},
          open(sys.argv[1] + f".{r}", "w"))
"""


def test_gather_rows_uneven_blocks_in_rank_order(tmp_path: Path) -> None:
    script = tmp_path / "gather.py"
    script.write_text(GATHER_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(script), str(tmp_path / "out")]
    done = subprocess.run(command, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = np.concatenate([np.arange(9).reshape(3, 3), 100 + np.arange(3).reshape(1, 3)])
    zero, one = (json.loads((tmp_path / f"out.{r}").read_text()) for r in (0, 1))
    assert np.array_equal(zero["every"], expected) and np.array_equal(one["every"], expected)
    assert np.array_equal(zero["main"], expected) and zero["dtype"] == "float16"
    assert one["main"] is None
    for result in (zero, one):
        assert "bad: the ranks' rows differ in shape or dtype" in result["refused"]


BUILD_SCRIPT = """
import sys
from pathlib import Path
from softloc import distributed
from softloc.cli import main
from softloc.mapping import Map
model, data, out = sys.argv[1:4]
status = main(["-q", "map", "build", "--model", model, "--data", data, "--out", out])
# every rank returns once the one map is saved: each can open it at once
Path(out + f".rank{distributed.rank()}").write_text(f"{status} {len(Map.load(out))}")
"""


def test_two_process_map_build_writes_one_map_equal_to_one_process(
    long_street, tmp_path: Path, model_file: Path
) -> None:
    single_map = build_map(model_file, long_street, tmp_path / "map1", progress=False)
    script = tmp_path / "build.py"
    script.write_text(BUILD_SCRIPT)
    out = tmp_path / "map2"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(script), str(model_file), str(long_street.root), str(out)]
    done = subprocess.run(command, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = Map.load(single_map, verify=True), Map.load(out, verify=True)
    assert len(two) == len(one) > 64  # more than one batch: both ranks described references
    for r in (0, 1):
        assert (tmp_path / f"map2.rank{r}").read_text() == f"0 {len(one)}"
    # one map, not one per rank: the same files as the single-process map, nothing beside it
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in single_map.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("map2")) == [
        "map2", "map2.rank0", "map2.rank1"]
    assert np.array_equal(two.descriptors, one.descriptors)  # bit for bit
    assert np.array_equal(two.places.path, one.places.path)


def test_two_process_evaluate_equals_one_process_number_for_number(
    long_street, tmp_path: Path, model_file: Path
) -> None:
    """Rank 0 alone computes the metrics (the sequence filter's validation fit included, a
    collective step both ranks take in the same order) and prints the table once."""
    the_map = build_map(model_file, long_street, tmp_path / "map1", progress=False)
    table = evaluate_maps({"map1": the_map}, long_street, tmp_path / "eval1", progress=False,
                          sequence_lengths=(3,))
    done = torchrun(["evaluate", "--map", str(the_map), "--data", str(long_street.root),
                     "--out", str(tmp_path / "eval2"), "--sequence", "3"], clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    single = json.loads((tmp_path / "eval1" / "results.json").read_text())
    double = json.loads((tmp_path / "eval2" / "results.json").read_text())
    assert single["map1"]["night"]["num_queries"] == 80  # two batches: one per rank
    assert "top1_seq3" in single["map1"]["night"]
    assert done.stdout.count(table.strip()) == 1  # printed by rank 0, not by rank 1
    assert double == single  # every number (floats included), every key
    assert (tmp_path / "eval2" / "results.md").read_text() == (
        tmp_path / "eval1" / "results.md").read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_ranks_one_killed(argv: list[str], kill_at: str) -> tuple[int, str, int, float]:
    """Run ``softloc -q ARGV`` as ranks 0 and 1 of a 2-process gloo launch, with the kill point
    ``kill_at`` (``"<point>:rank1"``) armed; returns (rank 0's exit code, its stderr, rank 1's
    exit code, seconds until both ended). Both are killed if rank 0 outlives 90 s."""
    port = str(free_port())
    ranks = []
    for r in (0, 1):
        env = clean_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                        MASTER_PORT=port, SOFTLOC_DIST_TIMEOUT_S="60")
        env[KILL_ENV] = kill_at
        ranks.append(subprocess.Popen([sys.executable, "-m", "softloc", "-q", *argv], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    started = time.monotonic()
    try:
        _, err0 = ranks[0].communicate(timeout=90)
        ranks[1].communicate(timeout=30)
    finally:
        for process in ranks:
            process.kill()
    return ranks[0].returncode, err0, ranks[1].returncode, time.monotonic() - started


def test_a_dead_rank_stops_the_other_with_a_clear_error_and_no_results(
    long_street, tmp_path: Path, model_file: Path
) -> None:
    the_map = build_map(model_file, long_street, tmp_path / "map", progress=False)
    out = tmp_path / "eval"
    code0, err0, code1, seconds = two_ranks_one_killed(
        ["evaluate", "--map", str(the_map), "--data", str(long_street.root), "--out", str(out)],
        "queries:rank1",  # rank 1 dies (SIGKILL) right before the gather
    )
    assert code1 == -9
    assert code0 == 2, err0[-3000:]
    assert "softloc evaluate: error: rank 0 of 2: queries failed: another rank died" in err0
    assert seconds < 90
    # nothing looks complete: no results.json (the evaluation's mark), no table
    assert not (out / "results.json").exists() and not (out / "results.md").exists()
    # and a re-run (here single-process) takes the same --out and completes
    evaluate_maps({"map": the_map}, long_street, out, progress=False)
    assert json.loads((out / "results.json").read_text())["map"]["night"]["num_queries"] == 80


def test_two_process_sweeps_equal_one_process_and_share_one_cache(
    long_street, tmp_path: Path, model_file: Path
) -> None:
    """``sweep dimension`` splits the raw descriptors over 2 ranks and writes what one
    process writes; ``sweep spacing`` in the same folder then takes rank 0's cache-hit
    decision on both ranks (the cache is not rewritten) and equals one process too."""
    from softloc.evaluation.whitening import WhiteningProtocol
    from softloc.sweeps.descriptors import CACHE_DESCRIPTORS, CACHE_FOLDER
    from softloc.sweeps.dimension import run_dimension_sweep
    from softloc.sweeps.spacing import run_spacing_sweep

    single, double = tmp_path / "sweep1", tmp_path / "sweep2"
    run_dimension_sweep(model_file, long_street, single, dims=[4, 8], progress=False)
    run_spacing_sweep(model_file, long_street, single, spacings=[0.0, 1.0],
                      protocol=WhiteningProtocol(dim=8), progress=False)
    common = ["--model", str(model_file), "--data", str(long_street.root), "--out", str(double)]
    done = torchrun(["sweep", "dimension", *common, "--dims", "4", "8"], clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("| 8 |") == 1  # the table, printed by rank 0 alone
    cache = double / CACHE_FOLDER / CACHE_DESCRIPTORS
    written = cache.stat().st_mtime_ns
    done = torchrun(["sweep", "spacing", *common, "--spacings", "0", "1",
                     "--whitening-dim", "8"], clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert cache.stat().st_mtime_ns == written  # both ranks reused rank 0's cache
    assert sorted(p.name for p in double.iterdir()) == sorted(p.name for p in single.iterdir())
    for kind in ("dimension", "spacing"):
        one = json.loads((single / f"sweep_{kind}.json").read_text())
        two = json.loads((double / f"sweep_{kind}.json").read_text())
        assert one["config"]["num_queries"] > 64  # more than one batch: both ranks described
        assert two == one  # every number, floats included
    assert np.array_equal(np.load(cache), np.load(single / CACHE_FOLDER / CACHE_DESCRIPTORS))
