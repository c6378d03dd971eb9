"""Drives along the route: where each frame is taken, when, and in which region.

The reference drive keeps to its lane (with a little wander); query drives stay 1 to 3.5 m to
the side of it, varying slowly (at the far end they are in the other lane), with a slow
heading wobble of a few degrees. Frames are about ``frame_spacing`` apart with speed jitter.
Drives happen on different days, at a time of day that suits the condition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from softloc.data.synthetic.config import (
    MAX_LATERAL,
    REFERENCE_CONDITION,
    REFERENCE_TRAVERSAL,
    REGIONS,
    TownConfig,
)
from softloc.data.synthetic.world import REFERENCE_LANE, World

#: Start of the first drive (2020-03-02 00:00:00 UTC), seconds since the epoch.
FIRST_DAY = 1_583_107_200.0
#: Hour of the day each condition's drive starts.
START_HOUR = {"overcast": 11.0, "sunny": 14.5, "night": 22.0, "snow": 9.5}


@dataclass(frozen=True, eq=False)
class Drive:
    """One traversal of the route.

    Attributes:
        traversal: its name in the places table (``reference`` or the condition).
        condition: appearance condition.
        seed: seeds its transient objects and appearance.
        s: (F,) arc length of each frame along the route, metres.
        lateral: (F,) offset to the left of the route's centre line, metres.
        x, y: (F,) camera position, metres.
        yaw: (F,) heading, radians counter-clockwise from +x, in (-pi, pi].
        timestamp: (F,) seconds since the epoch, increasing.
        split: (F,) region of each frame: ``train``, ``val`` or ``test``.
    """

    traversal: str
    condition: str
    seed: int
    s: np.ndarray
    lateral: np.ndarray
    x: np.ndarray
    y: np.ndarray
    yaw: np.ndarray
    timestamp: np.ndarray
    split: np.ndarray

    def __len__(self) -> int:
        return len(self.s)


def drive_seed(seed: int, index: int) -> int:
    """The seed of drive ``index`` of the town ``seed``."""
    return int(np.random.SeedSequence([int(seed), 7, int(index)]).generate_state(1)[0])


def plan_drives(world: World, config: TownConfig) -> list[Drive]:
    """The reference drive followed by one query drive per condition, frames in gaps dropped."""
    specs = [(REFERENCE_TRAVERSAL, REFERENCE_CONDITION)]
    specs += [(condition, condition) for condition in config.conditions]
    drives = []
    for index, (traversal, condition) in enumerate(specs):
        seed = drive_seed(config.seed, index)
        drives.append(
            _plan_drive(world, config, traversal, condition, seed, index, reference=index == 0)
        )
    return drives


def smooth_noise(rng: np.random.Generator, s: np.ndarray, wavelength: float) -> np.ndarray:
    """Slowly varying random values in [0, 1] at positions ``s`` (metres).

    Random knots every ``wavelength`` metres joined by cosine interpolation.
    """
    s = np.asarray(s, dtype=np.float64)
    span = float(s.max()) if s.size else 0.0
    knots = rng.random(int(span // wavelength) + 3)
    position = s / wavelength
    i = np.floor(position).astype(int)
    frac = position - i
    w = 0.5 - 0.5 * np.cos(np.pi * frac)
    return knots[i] * (1 - w) + knots[i + 1] * w


def _plan_drive(
    world: World,
    config: TownConfig,
    traversal: str,
    condition: str,
    seed: int,
    day: int,
    reference: bool,
) -> Drive:
    rng = np.random.default_rng([seed, 0])
    route = world.route
    spacing = config.frame_spacing
    # Frame positions: spacing with slowly varying jitter (+-20 %), starting at a random point.
    nominal = np.arange(0.0, route.length + 2 * spacing, spacing)
    jitter = smooth_noise(rng, nominal, 60.0)
    step = spacing * (1.0 + 0.4 * (jitter - jitter.mean()))  # mean exactly ``spacing``
    s = float(rng.uniform(0.0, spacing)) + np.r_[0.0, np.cumsum(step)]
    s = s[s < route.length]

    if reference:
        lateral = REFERENCE_LANE + 0.5 * (smooth_noise(rng, s, 90.0) - 0.5)
        wobble_deg = 1.0
    else:
        low, high = config.query_offset
        wander = smooth_noise(rng, s, 150.0)
        # Stretched so that every drive spends time both near the reference and at the far
        # end (the other lane), however short the route.
        wander = (wander - wander.min()) / max(float(np.ptp(wander)), 1e-9)
        offset = low + (high - low) * wander
        lateral = REFERENCE_LANE - offset
        wobble_deg = config.heading_jitter_deg
    lateral = np.clip(lateral, -MAX_LATERAL, MAX_LATERAL)

    cx, cy, heading = route.at(s)
    normal_x, normal_y = -np.sin(heading), np.cos(heading)
    x = cx + lateral * normal_x
    y = cy + lateral * normal_y
    # Heading follows the path actually driven (lane changes turn the car) plus a wobble.
    drift = np.arctan(np.gradient(lateral, s)) if len(s) > 1 else np.zeros_like(s)
    wobble = np.radians(wobble_deg) * (2 * smooth_noise(rng, s, 40.0) - 1)
    yaw = np.angle(np.exp(1j * (heading + drift + wobble)))

    speed = 5.0 + 6.0 * smooth_noise(rng, s, 120.0)  # m/s
    dt = np.diff(s, prepend=s[0]) / speed
    start = FIRST_DAY + 86400.0 * day + 3600.0 * START_HOUR[condition]
    timestamp = start + np.cumsum(dt)

    region = world.region_at(s)
    keep = region >= 0
    names = np.asarray(REGIONS)
    return Drive(
        traversal=traversal,
        condition=condition,
        seed=seed,
        s=s[keep],
        lateral=lateral[keep],
        x=x[keep],
        y=y[keep],
        yaw=yaw[keep],
        timestamp=timestamp[keep],
        split=names[region[keep]],
    )
