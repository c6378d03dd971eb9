"""UTM conversion checked against coordinate pairs published with the datasets."""

from __future__ import annotations

import numpy as np
import pytest

from softloc.data.readers.geo import (
    OXFORD,
    PITTSBURGH,
    compass_to_yaw,
    latlon_to_utm,
    ned_yaw_to_yaw,
    utm_to_latlon,
)


def test_oxford_ins_sample_row():
    # a real RobotCar ins.csv row: lat 51.760642, lon -1.260381 -> the INS's own UTM (30U)
    points = latlon_to_utm(np.array([51.760642]), np.array([-1.260381]))
    assert (points.zone_number, points.zone_letter) == (30, "U")
    assert points.easting[0] == pytest.approx(620057.410348, abs=0.1)
    assert points.northing[0] == pytest.approx(5735848.358489, abs=0.1)
    assert OXFORD.contains_utm(points.easting, points.northing).all()


def test_pittsburgh_vg_benchmark_name():
    # datasets_vg name @0584468.67@4477301.78@17@T@040.44207@-080.00399@...: lat/lon are rounded
    # to 1e-5 degrees (about 1 m), so the published easting/northing agree to about a metre
    points = latlon_to_utm(np.array([40.44207]), np.array([-80.00399]))
    assert (points.zone_number, points.zone_letter) == (17, "T")
    assert points.easting[0] == pytest.approx(584468.67, abs=1.0)
    assert points.northing[0] == pytest.approx(4477301.78, abs=1.5)
    lat, lon = utm_to_latlon(np.array([584468.67]), np.array([4477301.78]), 17, "T")
    assert (lat[0], lon[0]) == pytest.approx((40.44207, -80.00399), abs=2e-5)
    assert PITTSBURGH.contains_utm(np.array([584468.67]), np.array([4477301.78]))[0]
    assert not OXFORD.contains_utm(np.array([584468.67]), np.array([4477301.78]))[0]


def test_drive_across_a_zone_border_stays_in_one_zone():
    # 3 points west of 6 degrees E (zone 31) and one east of it (zone 32)
    lat = np.array([50.0, 50.0, 50.0, 50.0])
    lon = np.array([5.95, 5.97, 5.99, 6.01])
    points = latlon_to_utm(lat, lon)
    assert points.zone_number == 31
    assert points.other_zone.tolist() == [False, False, False, True]
    # consecutive points 0.02 degrees of longitude apart at 50 N: about 1430 m each
    steps = np.hypot(np.diff(points.easting), np.diff(points.northing))
    # (the step across the border is projected in zone 31 like the others)
    assert steps == pytest.approx(np.full(3, 111_320 * np.cos(np.radians(50)) * 0.02), rel=0.01)


def test_heading_conventions():
    # compass: 0 = north, 90 = east; ours: counter-clockwise from east
    assert compass_to_yaw(np.array([0.0, 90.0, 180.0, 270.0])) == pytest.approx(
        [np.pi / 2, 0.0, 3 * np.pi / 2, np.pi])
    assert ned_yaw_to_yaw(np.array([0.0, np.pi / 2])) == pytest.approx([np.pi / 2, 0.0])
