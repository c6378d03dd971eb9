"""The procedural town: a built-in place-recognition dataset that needs no download.

A seeded street grid with varied buildings, trees, lamps and signs; drives along one closed
route under ``overcast``, ``sunny``, ``night`` and ``snow``; images ray cast with numpy.

Example:
    >>> from softloc.data.synthetic import TownConfig, generate_town
    >>> table = generate_town("town", TownConfig(seed=0))  # doctest: +SKIP
"""

from softloc.data.synthetic.camera import Camera, Pose
from softloc.data.synthetic.config import CONDITIONS, REGIONS, TownConfig
from softloc.data.synthetic.drives import Drive, plan_drives
from softloc.data.synthetic.generate import camera_for, generate_town
from softloc.data.synthetic.renderer import render_frame, render_view
from softloc.data.synthetic.scene import DriveScene, make_drive_scene
from softloc.data.synthetic.world import World, build_world

__all__ = [
    "CONDITIONS",
    "REGIONS",
    "Camera",
    "Drive",
    "DriveScene",
    "Pose",
    "TownConfig",
    "World",
    "build_world",
    "camera_for",
    "generate_town",
    "make_drive_scene",
    "plan_drives",
    "render_frame",
    "render_view",
]
