"""Hilly-terrain versions of gymnasium's MuJoCo v5 locomotion tasks.

The paper's hilly tasks (HopperHilly, Walker2dHilly, HalfCheetahHilly) came
from rllab, which no longer runs. This module rebuilds them on gymnasium v5
from rllab's description: Gaussian hills on a jittered grid over a 40 m x
40 m patch, the height being the maximum over the hills, a flat start area
blended into the hills, all inside an 80 m x 80 m heightfield that is flat
outside the patch. ``difficulty`` is the height of the highest point in
metres. The terrain is a pure function of (difficulty, terrain_seed), so
every MPI rank building the same env gets the same ground.

Each env subclasses the plain v5 class and keeps its observations and reward
code. One deliberate difference: the healthy-height range of Hopper, Walker2d
and Ant is measured from the ground under the torso rather than from z = 0,
since on a 1 m hill the stock absolute range ends Walker2d and Ant episodes
for standing upright and lets a fallen Hopper count as healthy.

Heightfield rows run along +y and columns along +x (MuJoCo's layout): row 0
is y = -FIELD_HALF_SIZE_M, column 0 is x = -FIELD_HALF_SIZE_M.
"""
from __future__ import annotations

import functools
import hashlib
import math
import numbers
import os
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import mujoco
import numpy as np
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
from gymnasium.envs.mujoco.hopper_v5 import HopperEnv
from gymnasium.envs.mujoco.mujoco_env import expand_model_path
from gymnasium.envs.mujoco.walker2d_v5 import Walker2dEnv
from gymnasium.utils import EzPickle

FIELD_HALF_SIZE_M = 40.0  # the heightfield spans [-40, 40] m in x and y (80 m x 80 m), centred on the origin
GRID_SPACING_M = 0.1  # 10 cm samples: hills (sigma >= 0.5 m) stay smooth, and 801 x 801 floats are cheap
PATCH_SIZE_M = 40.0  # side of the square hilly patch (rllab's 40 m x 40 m)
PATCH_CENTRE_XY_M = (14.0, 0.0)  # patch spans x in [-6, 34]: the robots run along +x, so most hills lie ahead
HILL_SPACING_M = 2.0  # grid pitch of hill centres: 20 x 20 = 400 hills on the patch
HILL_JITTER_M = 1.0  # each centre moves uniformly up to +-1 m in x and y, so the grid does not show
HILL_SIGMA_RANGE_M = (0.5, 0.9)  # per-hill Gaussian std, about rllab's; steepest slope = 0.61 x height / sigma
HILL_PEAK_RANGE = (0.25, 1.0)  # per-hill peak before scaling, relative: a mix of bumps and full-height hills
HILL_CUTOFF_SIGMAS = 5.0  # a hill is evaluated within 5 sigma of its centre (exp(-12.5) beyond: negligible)
START_XY_M = (0.0, 0.0)  # where every robot starts (the stock models' initial x, y)
START_FLAT_RADIUS_M = 2.0  # exactly flat (height 0) within this distance of the start: no robot starts in a hill
START_BLEND_M = 2.0  # heights ramp smoothly from 0 to full over this distance beyond the flat radius
EDGE_BLEND_M = 2.0  # heights ramp down to 0 over this distance inside the patch border: no cliffs at the edge
HFIELD_BASE_M = 0.5  # thickness of the solid below z = 0 that MuJoCo gives a heightfield
OUTER_FLOOR_M = 1000.0  # flat boxes reach this far beyond the field: HalfCheetah can run ~250 m an episode


_GRID_POINTS = int(round(2 * FIELD_HALF_SIZE_M / GRID_SPACING_M)) + 1  # samples per side, both borders included


def check_difficulty(difficulty) -> float:
    """``difficulty`` as a float, or ValueError if it is not a finite number > 0."""
    if isinstance(difficulty, numbers.Real) and not isinstance(difficulty, bool):
        value = float(difficulty)
        if math.isfinite(value) and value > 0:
            return value
    raise ValueError(f"difficulty must be a finite number > 0 (the maximum hill height in metres), got {difficulty!r}")


def check_terrain_seed(terrain_seed) -> int:
    """``terrain_seed`` as an int, or ValueError if it is not an integer >= 0."""
    if isinstance(terrain_seed, numbers.Integral) and not isinstance(terrain_seed, bool) and terrain_seed >= 0:
        return int(terrain_seed)
    raise ValueError(f"terrain_seed must be an integer >= 0, got {terrain_seed!r}")


def grid_coordinates() -> np.ndarray:
    """World x (= world y) of each heightfield column (= row), in metres."""
    return np.linspace(-FIELD_HALF_SIZE_M, FIELD_HALF_SIZE_M, _GRID_POINTS)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    """0 below 0, 1 above 1, C1-smooth between: blends without a kink in the slope."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@functools.lru_cache(maxsize=8)
def _cached_heights(difficulty: float, terrain_seed: int) -> np.ndarray:
    """The height grid (rows y, columns x, metres); cached and read-only, since envs share it."""
    rng = np.random.default_rng(terrain_seed)
    coords = grid_coordinates()
    heights = np.zeros((_GRID_POINTS, _GRID_POINTS))

    patch_min_x = PATCH_CENTRE_XY_M[0] - PATCH_SIZE_M / 2
    patch_min_y = PATCH_CENTRE_XY_M[1] - PATCH_SIZE_M / 2
    hills_per_side = int(round(PATCH_SIZE_M / HILL_SPACING_M))
    n_hills = hills_per_side**2
    # Cell centres of the grid, then jitter, widths and peaks, drawn in this fixed order.
    cell = (np.arange(hills_per_side) + 0.5) * HILL_SPACING_M
    centre_x, centre_y = np.meshgrid(patch_min_x + cell, patch_min_y + cell, indexing="xy")
    centre_x = centre_x.ravel() + rng.uniform(-HILL_JITTER_M, HILL_JITTER_M, n_hills)
    centre_y = centre_y.ravel() + rng.uniform(-HILL_JITTER_M, HILL_JITTER_M, n_hills)
    sigmas = rng.uniform(*HILL_SIGMA_RANGE_M, n_hills)
    peaks = rng.uniform(*HILL_PEAK_RANGE, n_hills)

    # Height is the maximum over the hills; each hill only touches a window
    # around its centre, which keeps this to a few million exp() calls.
    def index_range(low_m, high_m):
        first = int(np.searchsorted(coords, low_m, side="left"))
        last = int(np.searchsorted(coords, high_m, side="right"))
        return first, last

    for cx, cy, sigma, peak in zip(centre_x, centre_y, sigmas, peaks):
        reach = HILL_CUTOFF_SIGMAS * sigma
        col0, col1 = index_range(cx - reach, cx + reach)
        row0, row1 = index_range(cy - reach, cy + reach)
        dx2 = (coords[col0:col1] - cx) ** 2
        dy2 = (coords[row0:row1] - cy) ** 2
        hill = peak * np.exp(-(dy2[:, None] + dx2[None, :]) / (2 * sigma**2))
        np.maximum(heights[row0:row1, col0:col1], hill, out=heights[row0:row1, col0:col1])

    # Flat outside the patch, ramping down inside its border, and flat around the start.
    x = coords[None, :]
    y = coords[:, None]
    inset_x = PATCH_SIZE_M / 2 - np.abs(x - PATCH_CENTRE_XY_M[0])
    inset_y = PATCH_SIZE_M / 2 - np.abs(y - PATCH_CENTRE_XY_M[1])
    heights *= _smoothstep(np.minimum(inset_x, inset_y) / EDGE_BLEND_M)
    start_distance = np.hypot(x - START_XY_M[0], y - START_XY_M[1])
    heights *= _smoothstep((start_distance - START_FLAT_RADIUS_M) / START_BLEND_M)

    heights *= difficulty / heights.max()  # the highest point is exactly `difficulty`
    heights.setflags(write=False)
    return heights


def terrain_heights(difficulty: float = 1.0, terrain_seed: int = 0) -> np.ndarray:
    """The terrain as a (801, 801) grid of heights in metres (rows y, columns x; see grid_coordinates)."""
    return _cached_heights(check_difficulty(difficulty), check_terrain_seed(terrain_seed)).copy()


def height_at(heights: np.ndarray, x: float, y: float) -> float:
    """Height of the grid at world (x, y), bilinearly interpolated; 0 off the field.

    MuJoCo triangulates each cell instead, which differs from this by far
    less than a centimetre on these smooth hills.
    """
    col = (x + FIELD_HALF_SIZE_M) / GRID_SPACING_M
    row = (y + FIELD_HALF_SIZE_M) / GRID_SPACING_M
    last = heights.shape[0] - 1
    if not (0 <= col <= last and 0 <= row <= last):
        return 0.0
    col0, row0 = min(int(col), last - 1), min(int(row), last - 1)
    fx, fy = col - col0, row - row0
    low = heights[row0, col0] * (1 - fx) + heights[row0, col0 + 1] * fx
    high = heights[row0 + 1, col0] * (1 - fx) + heights[row0 + 1, col0 + 1] * fx
    return float(low * (1 - fy) + high * fy)


@functools.lru_cache(maxsize=None)
def _stock_extent_and_centre(base_xml_path: str) -> tuple[float, tuple[float, ...]]:
    """The compiled base model's extent and centre; cached, as compiling it may log warnings each time."""
    statistic = mujoco.MjModel.from_xml_path(base_xml_path).stat
    return float(statistic.extent), tuple(float(v) for v in statistic.center)


def _hilly_xml_text(base_xml_path: str, difficulty: float) -> str:
    """The base model with its floor plane replaced by the heightfield plus flat ground around it.

    A plane cannot sit alongside the heightfield: MuJoCo planes are infinite,
    so it would double every contact on flat ground (or, lowered, hide the
    feet of the hills). Four boxes whose tops are at z = 0 carry on the flat
    ground beyond the field instead. The new geoms copy the floor's
    attributes (contype, conaffinity, condim, material, ...), so they collide
    with the robot exactly as the stock floor does.
    """
    root = ET.parse(base_xml_path).getroot()
    worldbody = root.find("worldbody")
    floors = [geom for geom in worldbody.findall("geom") if geom.get("type") == "plane"]
    if len(floors) != 1:
        raise ValueError(f"{base_xml_path}: expected one floor plane in <worldbody>, found {len(floors)}")
    floor = floors[0]
    floor_attributes = {k: v for k, v in floor.attrib.items() if k not in ("type", "size", "pos", "name")}
    position = list(worldbody).index(floor)
    worldbody.remove(floor)

    asset = root.find("asset")
    if asset is None:
        asset = ET.SubElement(root, "asset")
    # Elevation size = difficulty, so normalized data in [0, 1] gives heights in metres.
    ET.SubElement(asset, "hfield", name="terrain", nrow=str(_GRID_POINTS), ncol=str(_GRID_POINTS),
                  size=f"{FIELD_HALF_SIZE_M!r} {FIELD_HALF_SIZE_M!r} {difficulty!r} {HFIELD_BASE_M!r}")

    new_geoms = [ET.Element("geom", {**floor_attributes, "name": floor.get("name", "floor"), "type": "hfield",
                                     "hfield": "terrain", "pos": "0 0 0"})]
    half_thickness = 0.5  # of the outer boxes; anything solid works, their tops are what matters
    reach = FIELD_HALF_SIZE_M + OUTER_FLOOR_M
    beyond = FIELD_HALF_SIZE_M + OUTER_FLOOR_M / 2
    boxes = {  # name: (centre x, centre y, half size x, half size y)
        "floor_east": (beyond, 0.0, OUTER_FLOOR_M / 2, reach),
        "floor_west": (-beyond, 0.0, OUTER_FLOOR_M / 2, reach),
        "floor_north": (0.0, beyond, FIELD_HALF_SIZE_M, OUTER_FLOOR_M / 2),
        "floor_south": (0.0, -beyond, FIELD_HALF_SIZE_M, OUTER_FLOOR_M / 2),
    }
    for name, (cx, cy, sx, sy) in boxes.items():
        new_geoms.append(ET.Element("geom", {**floor_attributes, "name": name, "type": "box",
                                             "pos": f"{cx!r} {cy!r} {-half_thickness!r}",
                                             "size": f"{sx!r} {sy!r} {half_thickness!r}"}))
    for offset, geom in enumerate(new_geoms):
        worldbody.insert(position + offset, geom)

    # MuJoCo scales the camera's near clipping plane by the model's extent,
    # which the 1 km boxes would blow up until the robot is clipped away:
    # keep the stock model's extent and centre.
    extent, centre = _stock_extent_and_centre(base_xml_path)
    statistic = root.find("statistic")
    if statistic is None:
        statistic = ET.SubElement(root, "statistic")
    statistic.set("extent", repr(extent))
    statistic.set("center", " ".join(repr(v) for v in centre))
    ET.indent(root)  # one element a line, for whoever opens the cached file
    return ET.tostring(root, encoding="unicode")


def _hilly_xml_path(base_xml_path: str, difficulty: float) -> str:
    """Write the hilly model to a per-user cache file named by its content hash; return its path.

    Same content, same file, so concurrent ranks agree; the write goes through
    a temporary file and an atomic rename, so no rank reads half a file.
    """
    text = _hilly_xml_text(base_xml_path, difficulty)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    directory = Path(cache_home) / "gpo_mpi" / "terrain"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:  # read-only home: fall back to a per-user temp directory
        directory = Path(tempfile.gettempdir()) / f"gpo_mpi_terrain_{os.getuid()}"
        directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{Path(base_xml_path).stem}_hilly_{digest}.xml"
    if not path.exists() or path.read_text() != text:
        handle, temporary = tempfile.mkstemp(dir=directory, suffix=".xml.tmp")
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    return str(path)


class _HillyTerrain:
    """Mixed in before a v5 locomotion env: builds its model on the hills, keeps the rest."""

    _STOCK_XML: str  # the base task's default xml_file

    def __init__(self, difficulty: float = 1.0, terrain_seed: int = 0, **kwargs):
        self.difficulty = check_difficulty(difficulty)
        self.terrain_seed = check_terrain_seed(terrain_seed)
        base_xml = expand_model_path(kwargs.pop("xml_file", self._STOCK_XML))
        super().__init__(xml_file=_hilly_xml_path(base_xml, self.difficulty), **kwargs)
        # Pickling rebuilds the env from these, not from the generated file's path.
        EzPickle.__init__(self, difficulty=difficulty, terrain_seed=terrain_seed, xml_file=base_xml, **kwargs)

        self._hfield_id = self.model.hfield("terrain").id
        self._heights = _cached_heights(self.difficulty, self.terrain_seed)
        # Set before the first reset; physics reads model.hfield_data directly.
        # A renderer made later uploads the heightfield itself when it starts.
        self.model.hfield_data[:] = (self._heights / self.difficulty).ravel()

    @property
    def terrain_heights(self) -> np.ndarray:
        """The heightfield read back from the MuJoCo model, in metres (rows y, columns x)."""
        start = self.model.hfield_adr[self._hfield_id]
        rows, cols = self.model.hfield_nrow[self._hfield_id], self.model.hfield_ncol[self._hfield_id]
        normalized = self.model.hfield_data[start:start + rows * cols].reshape(rows, cols)
        return normalized * self.model.hfield_size[self._hfield_id, 2]

    def terrain_height_at(self, x: float, y: float) -> float:
        """Ground height in metres at world (x, y); 0 off the heightfield."""
        return height_at(self._heights, x, y)


class _GroundRelativeHealth:
    """Makes the base task's healthy_z_range apply to the torso's height above the local ground."""

    @property
    def is_healthy(self):
        # Shift the range rather than z, so the base class's own test runs unchanged.
        """The stock health test with the torso's height range raised by the ground's height under it."""
        torso_x, torso_y = self.data.body("torso").xpos[:2]
        ground = self.terrain_height_at(torso_x, torso_y)
        stock_range = self._healthy_z_range
        self._healthy_z_range = (stock_range[0] + ground, stock_range[1] + ground)
        try:
            return super().is_healthy
        finally:
            self._healthy_z_range = stock_range


class HopperHillyEnv(_GroundRelativeHealth, _HillyTerrain, HopperEnv):
    """Hopper-v5 on hills; extra kwargs ``difficulty`` (max hill height, m) and ``terrain_seed``."""

    _STOCK_XML = "hopper.xml"


class Walker2dHillyEnv(_GroundRelativeHealth, _HillyTerrain, Walker2dEnv):
    """Walker2d-v5 on hills; extra kwargs ``difficulty`` (max hill height, m) and ``terrain_seed``."""

    _STOCK_XML = "walker2d_v5.xml"


class HalfCheetahHillyEnv(_HillyTerrain, HalfCheetahEnv):
    """HalfCheetah-v5 on hills (it has no health check); extra kwargs ``difficulty`` and ``terrain_seed``."""

    _STOCK_XML = "half_cheetah.xml"


class AntHillyEnv(_GroundRelativeHealth, _HillyTerrain, AntEnv):
    """Ant-v5 on hills; extra kwargs ``difficulty`` (max hill height, m) and ``terrain_seed``."""

    _STOCK_XML = "ant.xml"
