"""Latitude/longitude <-> UTM (via the ``utm`` package) and the expected area of a dataset.

Positions in softloc are metres in one UTM zone (x = easting, y = northing). Headings are
radians counter-clockwise from +x (east); datasets give compass headings (clockwise from
north), converted by :func:`compass_to_yaw`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import utm


@dataclass(frozen=True)
class Area:
    """Where a dataset lies: its UTM zone and a latitude/longitude box around the city."""

    zone_number: int
    zone_letter: str
    lat_range: tuple[float, float]
    lon_range: tuple[float, float]

    @property
    def zone(self) -> str:
        return f"{self.zone_number}{self.zone_letter}"

    def contains_utm(self, easting: np.ndarray, northing: np.ndarray) -> np.ndarray:
        """True where (easting, northing), read in this zone, falls inside the box."""
        easting = np.asarray(easting, dtype=np.float64)
        northing = np.asarray(northing, dtype=np.float64)
        inside = np.zeros(easting.shape, dtype=bool)
        finite = np.isfinite(easting) & np.isfinite(northing)
        # utm rejects eastings outside [100 km, 1000 km) and northings outside [0, 10000 km)
        plausible = finite & (easting >= 1e5) & (easting < 1e6)
        plausible &= (northing >= 0) & (northing <= 1e7)
        if plausible.any():
            lat, lon = utm.to_latlon(
                easting[plausible], northing[plausible], self.zone_number, self.zone_letter,
                strict=False,
            )
            inside[plausible] = (
                (lat >= self.lat_range[0]) & (lat <= self.lat_range[1])
                & (lon >= self.lon_range[0]) & (lon <= self.lon_range[1])
            )
        return inside


#: Oxford (RobotCar): zone 30U.
OXFORD = Area(30, "U", (51.6, 51.9), (-1.45, -1.05))
#: Pittsburgh (NetVLAD Pittsburgh 30k/250k): zone 17T.
PITTSBURGH = Area(17, "T", (40.3, 40.6), (-80.2, -79.8))


@dataclass(frozen=True)
class UtmPoints:
    """Points converted to one UTM zone."""

    easting: np.ndarray
    northing: np.ndarray
    zone_number: int
    zone_letter: str
    other_zone: np.ndarray  # True where the point's own zone differs from the chosen one


def latlon_to_utm(
    lat: np.ndarray, lon: np.ndarray, zone_number: int | None = None
) -> UtmPoints:
    """Convert WGS84 degrees to UTM metres, all in one zone.

    The zone is ``zone_number`` when given, else the most common zone of the points, so that
    a drive crossing a zone border stays in one metric frame (points are projected into the
    neighbouring zone, which is accurate to well under a metre near the border).

    Raises:
        ValueError: a latitude outside [-80, 84] or longitude outside [-180, 180].
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    if lat.size == 0:
        return UtmPoints(lat.copy(), lon.copy(), zone_number or 0, "", np.zeros(0, dtype=bool))
    if np.any(np.abs(lat) > 84) or np.any(lat < -80) or np.any(np.abs(lon) > 180):
        raise ValueError("latitude must lie in [-80, 84] and longitude in [-180, 180] degrees")
    own = np.array([utm.latlon_to_zone_number(a, o) for a, o in zip(lat, lon, strict=True)])
    if zone_number is None:
        zone_number = Counter(own.tolist()).most_common(1)[0][0]
    easting, northing, number, letter = utm.from_latlon(
        lat, lon, force_zone_number=int(zone_number),
        force_northern=bool(np.median(lat) >= 0),
    )
    letter = utm.latitude_to_zone_letter(float(np.median(lat)))
    return UtmPoints(
        np.asarray(easting, dtype=np.float64), np.asarray(northing, dtype=np.float64),
        int(number), str(letter), own != zone_number,
    )


def utm_to_latlon(
    easting: np.ndarray, northing: np.ndarray, zone_number: int, zone_letter: str
) -> tuple[np.ndarray, np.ndarray]:
    """UTM metres in the given zone to WGS84 degrees (latitude, longitude)."""
    lat, lon = utm.to_latlon(
        np.asarray(easting, dtype=np.float64), np.asarray(northing, dtype=np.float64),
        zone_number, zone_letter, strict=False,
    )
    return np.asarray(lat), np.asarray(lon)


def compass_to_yaw(degrees: np.ndarray) -> np.ndarray:
    """Compass heading (degrees clockwise from north) -> radians counter-clockwise from east."""
    return np.mod(np.pi / 2 - np.radians(np.asarray(degrees, dtype=np.float64)), 2 * np.pi)


def ned_yaw_to_yaw(yaw: np.ndarray) -> np.ndarray:
    """INS yaw (radians clockwise from north, NED frame) -> radians counter-clockwise from east."""
    return np.mod(np.pi / 2 - np.asarray(yaw, dtype=np.float64), 2 * np.pi)
