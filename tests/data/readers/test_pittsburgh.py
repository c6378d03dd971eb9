"""Pittsburgh reader on the real pitts30k-test dbStruct and on savemat fixtures."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from softloc.data.readers.pittsburgh import read_dbstruct, read_pittsburgh
from softloc.data.readers.report import DatasetError

E0, N0 = 584500.0, 4477000.0  # inside Pittsburgh, zone 17T


def test_real_pitts30k_test_counts_ranges_and_ground_truth(fx):
    result = read_pittsburgh(fx.PITTS_MAT)
    table = result.table
    db, q = table.where(traversal="reference"), table.where(traversal="query")
    # published counts and database extent (NetVLAD release, Patch-NetVLAD ground truth)
    assert (len(db), len(q)) == (10000, 6816)
    assert result.problems == []
    assert set(table.split) == {"test"}
    assert 584291 <= db.x.min() and db.x.max() <= 584829
    assert 4476686 <= db.y.min() and db.y.max() <= 4477148
    assert db.path[0] == "000/000829_pitch1_yaw1.jpg"
    assert q.path[0] == "queries_real/000/000546_pitch1_yaw1.jpg"
    # 25 m ground truth, by brute force: every test query has a database image within 25 m
    nn = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(db.xy)
    distance, _ = nn.kneighbors(q.xy)
    assert distance.max() <= 25.0
    assert read_dbstruct(fx.PITTS_MAT).pos_dist_thr == 25.0


def test_real_pitts30k_protocol_options(fx):
    names = read_dbstruct(fx.PITTS_MAT)
    pitch2 = sum("_pitch2_" in n for n in names.db_names + names.q_names)
    result = read_pittsburgh(fx.PITTS_MAT, max_db_distance=100.0, pitch1_only=True)
    assert result.counts() == {"not_pitch1": pitch2}
    assert len(result.table) == 16816 - pitch2
    assert all("_pitch1_" in p for p in result.table.path)


def test_savemat_fixture_far_database_nan_and_zone(tmp_path, fx):
    db_names = [f"000/00000{i}_pitch{1 + i % 2}_yaw{i + 1}.jpg" for i in range(5)]
    q_names = ["000/000100_pitch1_yaw1.jpg", "000/000101_pitch1_yaw4.jpg"]
    utm_db = [[E0, E0 + 99, E0 + 150, np.nan, 200000.0],   # easting row
              [N0, N0, N0, N0, N0]]                        # northing row
    utm_q = [[E0 + 1, E0 - 50], [N0, N0]]
    mat = fx.write_dbstruct(tmp_path / "Pitts" / "datasets" / "pitts30k_test.mat",
                            db_names, utm_db, q_names, utm_q)
    result = read_pittsburgh(mat, max_db_distance=100.0)
    assert result.table.root == tmp_path / "Pitts"
    assert result.counts() == {"far_from_queries": 1, "no_position": 1, "unexpected_zone": 1}
    # E0 + 99 is 98 m from the nearest query (E0 + 1): kept; E0 + 150 is 149 m away: dropped
    assert list(result.table.x) == [E0, E0 + 99, E0 + 1, E0 - 50]
    assert list(result.table.traversal) == ["reference", "reference", "query", "query"]
    # yaw<k> -> (k - 1) * 30 degrees
    assert result.table.yaw == pytest.approx(np.radians([0, 30, 0, 90]))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a mat file at all", "cannot read as a MATLAB"),
        (None, "no 'dbStruct' variable"),
    ],
)
def test_broken_mat_files(tmp_path, content, message):
    from scipy.io import savemat

    path = tmp_path / "broken.mat"
    if content is None:
        savemat(path, {"somethingElse": np.zeros(3)})
    else:
        path.write_bytes(content)
    with pytest.raises(DatasetError, match=message):
        read_dbstruct(path)


def test_inconsistent_dbstruct(tmp_path, fx):
    path = fx.write_dbstruct(tmp_path / "x.mat", ["a.jpg", "b.jpg"], [[E0, E0], [N0, N0]],
                             ["c.jpg"], [[E0], [N0]])
    from scipy.io import loadmat, savemat

    struct = loadmat(path)["dbStruct"]
    struct["utmDb"][0, 0] = np.zeros((3, 2))
    savemat(path, {"dbStruct": struct})
    with pytest.raises(DatasetError, match=r"utmDb has shape \(3, 2\), expected \(2, 2\)"):
        read_dbstruct(path)
    with pytest.raises(DatasetError, match="no such file"):
        read_dbstruct(tmp_path / "missing.mat")
