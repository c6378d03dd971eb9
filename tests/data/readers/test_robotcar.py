"""RobotCar reader: file formats, interpolation worked by hand, heading wrap, demosaic, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from softloc.data.images import ImageError
from softloc.data.readers.report import DatasetError
from softloc.data.readers.robotcar import (
    BayerLoader,
    demosaic,
    interpolate_ins,
    load_robotcar_config,
    read_camera_model,
    read_ins,
    read_robotcar,
    read_stereo_timestamps,
    undistort,
)

DATE = "2014-12-02-15-30-08"


def _ins_file(tmp_path, fx, rows):
    from softloc.data.readers.robotcar import INS_COLUMNS

    path = tmp_path / "ins.csv"
    path.write_text(",".join(INS_COLUMNS) + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_interpolation_matches_hand_computation(tmp_path, fx):
    # rows at t = 1e15 + {0, 20000, 40000} us; image at +5000 (w = 0.25) and +30000 (w = 0.5)
    t0 = 1_000_000_000_000_000
    rows = [
        fx.ins_row(t0, 5735800.0, 620000.0, 1.0),
        fx.ins_row(t0 + 20_000, 5735804.0, 620002.0, 1.4),
        fx.ins_row(t0 + 40_000, 5735806.0, 620010.0, 1.2),
    ]
    ins = read_ins(_ins_file(tmp_path, fx, rows))
    poses = interpolate_ins(ins, np.array([t0 + 5_000, t0 + 30_000, t0 + 40_000]))
    # by hand: 5735800 + 0.25 * 4 = 5735801; 620000 + 0.25 * 2 = 620000.5; yaw 1 + 0.25 * 0.4
    assert poses.northing == pytest.approx([5735801.0, 5735805.0, 5735806.0], abs=1e-9)
    assert poses.easting == pytest.approx([620000.5, 620006.0, 620010.0], abs=1e-9)
    assert poses.yaw == pytest.approx([1.1, 1.3, 1.2], abs=1e-6)
    assert poses.good.all()


def test_nearest_two_rows_on_one_side_are_not_used(tmp_path, fx):
    # rows at 0, 10, 100 ms: an image at 12 ms has nearest rows 0 and 10 (both before it); the
    # bracketing rows are 10 and 100, so the position is 2/90 of the way from row 1 to row 2.
    t0 = 2_000_000_000_000_000
    rows = [fx.ins_row(t0, 0.0 + 5.7e6, 6.2e5, 0.0), fx.ins_row(t0 + 10_000, 5.7e6 + 1, 6.2e5, 0.0),
            fx.ins_row(t0 + 100_000, 5.7e6 + 91, 6.2e5, 0.0)]
    poses = interpolate_ins(read_ins(_ins_file(tmp_path, fx, rows)), np.array([t0 + 12_000]))
    assert poses.northing[0] == pytest.approx(5.7e6 + 1 + 90 * 2 / 90, abs=1e-9)


def test_heading_wraps_through_north(tmp_path, fx):
    t0 = 1_000_000_000_000_000
    two_pi = 2 * np.pi
    rows = [fx.ins_row(t0, 5.7e6, 6.2e5, 6.2), fx.ins_row(t0 + 20_000, 5.7e6, 6.2e5, 0.1),
            fx.ins_row(t0 + 40_000, 5.7e6, 6.2e5, -3.0), fx.ins_row(t0 + 60_000, 5.7e6, 6.2e5, 3.0)]
    poses = interpolate_ins(read_ins(_ins_file(tmp_path, fx, rows)),
                            np.array([t0 + 10_000, t0 + 15_000, t0 + 50_000]))
    # 6.2 -> 0.1 is a turn of 0.1 + 2pi - 6.2 = 0.18318... rad through 0
    step = 0.1 + two_pi - 6.2
    assert poses.yaw[0] == pytest.approx((6.2 + step / 2) % two_pi, abs=1e-6)
    assert poses.yaw[1] == pytest.approx((6.2 + 0.75 * step) % two_pi, abs=1e-6)
    # -3.0 -> 3.0 passes through pi (a turn of -(2pi - 6)), not through 0
    assert poses.yaw[2] == pytest.approx((-3.0 - (two_pi - 6.0) / 2) % two_pi, abs=1e-6)
    assert np.all((poses.yaw >= 0) & (poses.yaw < two_pi))


def test_frames_outside_ins_span_or_not_good_are_dropped(tmp_path, fx):
    t0 = 1_000_000_000_000_000
    rows = [fx.ins_row(t0 + k * 20_000, 5735848.0 + k, 620057.0, 0.0,
                       status="INS_ALIGNMENT_COMPLETE" if k == 3 else "INS_SOLUTION_GOOD")
            for k in range(8)]
    frames = [t0 - 5_000, t0 + 10_000, t0 + 50_000, t0 + 65_000, t0 + 110_000, t0 + 200_000]
    fx.write_drive(tmp_path, DATE, frames, rows)
    result = read_robotcar(tmp_path)
    counts = result.counts()
    # before the first row, after the last row; frames bracketed by row 3 (t in [40, 80) ms)
    assert counts == {"ins_not_good": 2, "no_position": 2}
    assert result.table.timestamp * 1e6 == pytest.approx([t0 + 10_000, t0 + 110_000])
    assert result.table.y == pytest.approx([5735848.5, 5735853.5])


def test_read_drive_positions_headings_and_labels(tmp_path, fx):
    fx.straight_drive(tmp_path, DATE, n=6)
    fx.straight_drive(tmp_path, "2014-12-17-18-18-43", n=4)
    fx.straight_drive(tmp_path, "2015-05-26-13-59-22", n=3)  # excluded by the paper config
    fx.straight_drive(tmp_path, "2014-07-14-14-49-50", n=3)  # not listed
    result = read_robotcar(tmp_path, "robotcar_paper")
    table = result.table
    assert len(table) == 10
    assert table.traversals() == ["reference", "night"]
    assert table.conditions() == ["overcast", "night"]
    assert result.counts() == {"excluded_drive": 3, "unlisted_drive": 3}
    # heading north-east: INS yaw pi/4 (clockwise from north) = pi/4 counter-clockwise from east
    assert table.yaw == pytest.approx(np.full(10, np.pi / 4))
    # frame i at t0 + 10 ms + i * 250 ms, moving 5 m/s on both axes
    s = 5.0 * (0.010 + 0.25 * np.arange(6))
    assert table.y[:6] == pytest.approx(fx.SAMPLE_NORTHING + s, abs=1e-6)
    assert table.x[:6] == pytest.approx(fx.SAMPLE_EASTING + s, abs=1e-6)
    assert table.path[0] == f"{DATE}/stereo/centre/1418132416747115.png"
    assert (tmp_path / table.path[0]).is_file()


def test_paper_config_lists_the_authors_drives():
    config = load_robotcar_config("robotcar_paper")
    assert config.drives["2014-12-02-15-30-08"].traversal == "reference"
    queries = {d: lab.condition for d, lab in config.drives.items() if lab.traversal != "reference"}
    assert queries == {
        "2015-08-14-14-54-57": "overcast", "2014-11-18-13-20-12": "sunny",
        "2014-12-17-18-18-43": "night", "2015-02-03-08-45-10": "snow",
    }
    assert len(config.excluded) == 9 and "2015-08-27-16-07-13" in config.excluded


def test_wrong_zone_and_duplicate_timestamps_are_reported(tmp_path, fx):
    t0 = 1_000_000_000_000_000
    rows = [fx.ins_row(t0 + k * 20_000, 5735848.0, 620057.0, 0.0, zone="31U" if k > 5 else "30U")
            for k in range(10)]
    fx.write_drive(tmp_path, DATE, [t0 + 10_000, t0 + 10_000, t0 + 30_000, t0 + 150_000], rows)
    result = read_robotcar(tmp_path)
    assert result.counts() == {"duplicate_timestamp": 1, "unexpected_zone": 1}
    assert len(result.table) == 2


def test_broken_inputs_name_the_file(tmp_path, fx):
    with pytest.raises(DatasetError, match="no drive folders"):
        read_robotcar(tmp_path)
    drive = fx.straight_drive(tmp_path, DATE, n=3)
    (drive / "gps" / "ins.csv").write_text("timestamp,latitude,longitude\n1,2,3\n")
    with pytest.raises(DatasetError, match=r"ins\.csv: missing column.*ins_status"):
        read_robotcar(tmp_path)
    (drive / "gps" / "ins.csv").unlink()
    with pytest.raises(DatasetError, match="no usable frame") as info:
        read_robotcar(tmp_path)
    assert "missing_metadata" in str(info.value)
    (drive / "stereo.timestamps").write_text("1418132416737115 1\nnot-a-number 1\n")
    with pytest.raises(DatasetError, match=r"stereo\.timestamps, line 2"):
        read_stereo_timestamps(drive / "stereo.timestamps")


def test_drive_without_gps_is_skipped_and_counted(tmp_path, fx):
    fx.straight_drive(tmp_path, DATE, n=3)
    other = fx.straight_drive(tmp_path, "2014-08-08-12-53-13", n=3)
    (other / "gps" / "ins.csv").unlink()
    result = read_robotcar(tmp_path)
    assert len(result.table) == 3
    assert result.counts() == {"missing_metadata": 1}


def test_demosaic_recovers_constant_colour_and_channel_order():
    rgb = np.zeros((8, 10, 3))
    rgb[...] = (200, 100, 50)
    raw = np.zeros((8, 10))
    # GBRG by hand: G at (even, even), B at (even, odd), R at (odd, even), G at (odd, odd)
    raw[0::2, 0::2], raw[0::2, 1::2], raw[1::2, 0::2], raw[1::2, 1::2] = 100, 50, 200, 100
    out = demosaic(raw, "GBRG")
    assert out[1:-1, 1:-1].reshape(-1, 3) == pytest.approx(np.tile([200, 100, 50], (48, 1)))
    swapped = demosaic(raw, "GRBG")  # the wrong pattern must swap red and blue
    assert swapped[1:-1, 1:-1, 0].mean() != pytest.approx(200)


def test_demosaic_reproduces_a_linear_ramp_inside(fx):
    # bilinear interpolation is exact for an image linear in x and y (away from the border)
    yy, xx = np.mgrid[0:12, 0:16].astype(np.float64)
    rgb = np.stack([10 + 3 * xx, 20 + 2 * yy + xx, 200 - 4 * yy], axis=-1)
    out = demosaic(fx.bayer_gbrg(rgb), "GBRG")
    assert out[1:-1, 1:-1] == pytest.approx(rgb[1:-1, 1:-1], abs=1e-9)


def test_bayer_loader_decodes_png_and_rejects_rgb(tmp_path, fx):
    drive = fx.straight_drive(tmp_path, DATE, n=1, colour=(30, 160, 220))
    image = BayerLoader()(next((drive / "stereo" / "centre").glob("*.png")))
    assert image.dtype == np.uint8 and image.shape == (12, 16, 3)
    assert image[1:-1, 1:-1].reshape(-1, 3).tolist() == [[30, 160, 220]] * 140
    rgb_file = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(rgb_file)
    with pytest.raises(ImageError, match="one-channel raw Bayer"):
        BayerLoader()(rgb_file)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ImageError, match="broken.png: cannot decode"):
        BayerLoader()(broken)


def _write_lut(models, xs, ys):
    models.mkdir(exist_ok=True)
    path = models / "stereo_narrow_left_distortion_lut.bin"
    np.concatenate([xs.ravel(), ys.ravel()]).astype(np.float64).tofile(path)
    return path


def test_undistort_with_sdk_lut_layout(tmp_path):
    h, w = 4, 5
    image = np.arange(h * w * 3, dtype=np.float64).reshape(h, w, 3)
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    _write_lut(tmp_path / "models", cols, rows)  # identity: x = column, y = row
    lut = read_camera_model(tmp_path / "models", "stereo/centre")
    assert undistort(image, lut) == pytest.approx(image)
    # every output pixel samples half a column to the right: the mean of two neighbours
    _write_lut(tmp_path / "models", cols + 0.5, rows)
    out = undistort(image, read_camera_model(tmp_path / "models", "stereo/centre"))
    assert out[:, :-1] == pytest.approx((image[:, :-1] + image[:, 1:]) / 2)
    # one row down: output row r is input row r + 1; the last row samples outside (zeros)
    _write_lut(tmp_path / "models", cols, rows + 1)
    out = undistort(image, read_camera_model(tmp_path / "models", "stereo/centre"))
    assert out[:-1] == pytest.approx(image[1:])
    assert np.all(out[-1] == 0)


def test_undistortion_errors(tmp_path):
    with pytest.raises(DatasetError, match="narrow_left_distortion_lut.bin: no distortion LUT"):
        read_camera_model(tmp_path, "stereo/centre")
    rows, cols = np.mgrid[0:3, 0:3].astype(np.float64)
    _write_lut(tmp_path / "models", cols, rows)
    with pytest.raises(ValueError, match="does not match the camera model"):
        undistort(np.zeros((4, 4, 3)), read_camera_model(tmp_path / "models", "stereo/centre"))
