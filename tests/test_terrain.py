"""The hilly terrain tasks: terrain generation, contacts with it, and the paper's task list."""
import math
import pickle

import gymnasium
import mujoco
import numpy as np
import pytest

import gpo_mpi
from gpo_mpi import terrain

HILLY_TO_PLAIN = {"HopperHilly-v5": "Hopper-v5", "Walker2dHilly-v5": "Walker2d-v5",
                  "HalfCheetahHilly-v5": "HalfCheetah-v5", "AntHilly-v5": "Ant-v5"}
PAPER_TASKS = ["Hopper-v5", "Walker2d-v5", "HalfCheetah-v5", "Ant-v5", "Swimmer-v5", "InvertedDoublePendulum-v5",
               "HopperHilly-v5", "Walker2dHilly-v5", "HalfCheetahHilly-v5", "AntHilly-v5"]
# Soft contacts let geoms sink a little (the plain tasks reach 2 cm on their floor);
# falling through the ground would go far past this.
PENETRATION_TOLERANCE_M = 0.06


def robot_clearance(env) -> float:
    """Lowest point of the robot's capsules and spheres above the terrain directly below it (m)."""
    model, data = env.unwrapped.model, env.unwrapped.data
    lowest = math.inf
    for geom in range(model.ngeom):
        if model.geom_bodyid[geom] == 0:  # the ground itself
            continue
        radius, half_length = model.geom_size[geom][:2]
        centre, axis = data.geom_xpos[geom], data.geom_xmat[geom].reshape(3, 3)[:, 2]
        if model.geom_type[geom] == mujoco.mjtGeom.mjGEOM_CAPSULE:
            points = [centre + axis * half_length, centre - axis * half_length]
        elif model.geom_type[geom] == mujoco.mjtGeom.mjGEOM_SPHERE:
            points = [centre]
        else:
            raise AssertionError(f"unexpected robot geom type {model.geom_type[geom]}")
        for x, y, z in points:
            lowest = min(lowest, z - radius - env.unwrapped.terrain_height_at(x, y))
    return lowest


def highest_point_on_x_axis(difficulty=1.0, seed=0):
    """(x, height) of the highest terrain point on y = 0, the line the planar robots move along."""
    heights = terrain.terrain_heights(difficulty, seed)
    coords = terrain.grid_coordinates()
    row = heights[np.argmin(np.abs(coords))]
    return coords[np.argmax(row)], row.max()


def touches_floor(env) -> bool:
    """Whether any contact involves the heightfield geom."""
    model, data = env.unwrapped.model, env.unwrapped.data
    floor = model.geom("floor").id
    return any(floor in (data.contact[i].geom1, data.contact[i].geom2) for i in range(data.ncon))


def test_register_is_idempotent_with_the_plain_horizon():
    gpo_mpi.register_hilly_envs()  # again, after `import gpo_mpi` did
    for hilly, plain in HILLY_TO_PLAIN.items():
        assert gymnasium.spec(hilly).max_episode_steps == gymnasium.spec(plain).max_episode_steps == 1000


def test_same_seed_same_terrain_other_seed_differs():
    first = terrain.terrain_heights(1.0, 7)
    np.testing.assert_array_equal(first, terrain.terrain_heights(1.0, 7))
    assert np.abs(first - terrain.terrain_heights(1.0, 8)).max() > 0.3
    # Two envs with the same kwargs hold that same terrain in their MuJoCo models.
    envs = [gymnasium.make("HopperHilly-v5", terrain_seed=7) for _ in range(2)]
    for env in envs:
        np.testing.assert_allclose(env.unwrapped.terrain_heights, first, atol=1e-6)


@pytest.mark.parametrize("difficulty", [1.0, 0.5])
def test_highest_point_is_the_difficulty(difficulty):
    heights = terrain.terrain_heights(difficulty)
    assert heights.max() == pytest.approx(difficulty, rel=1e-6)
    assert heights.min() == 0.0
    model_heights = gymnasium.make("Walker2dHilly-v5", difficulty=difficulty).unwrapped.terrain_heights
    assert model_heights.max() == pytest.approx(difficulty, rel=1e-6)
    # Hills, not one spike: a good part of the patch stands above a quarter of the difficulty.
    assert (heights > 0.25 * difficulty).sum() * terrain.GRID_SPACING_M**2 > 0.2 * terrain.PATCH_SIZE_M**2


def test_hills_start_soon_ahead_and_field_is_flat_outside_the_patch():
    heights = terrain.terrain_heights(1.0)
    coords = terrain.grid_coordinates()
    x, y = coords[None, :], coords[:, None]
    # On the robots' line, a sizeable hill within 6 m past the end of the start area's blend.
    blend_end = terrain.START_FLAT_RADIUS_M + terrain.START_BLEND_M
    ahead = (coords >= blend_end) & (coords <= blend_end + 6.0)
    assert heights[np.argmin(np.abs(coords)), ahead].max() > 0.3
    centre_x, centre_y = terrain.PATCH_CENTRE_XY_M
    half = terrain.PATCH_SIZE_M / 2
    outside = (np.abs(x - centre_x) >= half) | (np.abs(y - centre_y) >= half)
    assert np.all(heights[outside] == 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_start_area_is_flat(seed):
    heights = terrain.terrain_heights(1.0, seed)
    coords = terrain.grid_coordinates()
    distance = np.hypot(coords[None, :] - terrain.START_XY_M[0], coords[:, None] - terrain.START_XY_M[1])
    assert np.all(heights[distance <= terrain.START_FLAT_RADIUS_M] == 0.0)


@pytest.mark.parametrize("env_id", ["HopperHilly-v5", "Walker2dHilly-v5"])
def test_robot_stays_on_the_ground_in_the_start_area(env_id):
    env = gymnasium.make(env_id, terminate_when_unhealthy=False)
    env.reset(seed=0)
    assert robot_clearance(env) > -0.01  # does not start inside the terrain
    rng = np.random.default_rng(0)
    for _ in range(300):
        observation, reward, _, _, _ = env.step(rng.uniform(-0.2, 0.2, env.action_space.shape))
        assert np.all(np.isfinite(observation)) and np.isfinite(reward)
        assert robot_clearance(env) > -PENETRATION_TOLERANCE_M
    assert touches_floor(env)
    torso_x, _, torso_z = env.unwrapped.data.body("torso").xpos
    assert torso_z > env.unwrapped.terrain_height_at(torso_x, 0.0) + 0.1


@pytest.mark.parametrize("env_id", ["HopperHilly-v5", "Walker2dHilly-v5"])
def test_robot_dropped_on_a_hill_rests_on_it(env_id):
    env = gymnasium.make(env_id, terminate_when_unhealthy=False)
    env.reset(seed=0)
    unwrapped = env.unwrapped
    assert unwrapped.model.geom("floor").type == mujoco.mjtGeom.mjGEOM_HFIELD
    peak_x, peak_height = highest_point_on_x_axis()
    assert peak_height > 0.8
    qpos = unwrapped.init_qpos.copy()
    qpos[0] = peak_x
    qpos[1] += peak_height + 0.05  # rootz: the stock standing height, lifted onto the hill
    unwrapped.set_state(qpos, np.zeros(unwrapped.model.nv))
    for _ in range(300):
        observation, *_ = env.step(np.zeros(env.action_space.shape))
        assert np.all(np.isfinite(observation))
        assert robot_clearance(env) > -PENETRATION_TOLERANCE_M
    assert touches_floor(env)
    # Resting on the hill, far above the plain ground it would have fallen to.
    lowest_robot_z = min(unwrapped.data.geom_xpos[g][2] for g in range(unwrapped.model.ngeom)
                         if unwrapped.model.geom_bodyid[g] != 0)
    assert lowest_robot_z > 0.5 * peak_height


def test_ant_dropped_on_the_highest_hill_rests_on_it():
    env = gymnasium.make("AntHilly-v5")
    env.reset(seed=0)
    heights = terrain.terrain_heights(1.0)
    coords = terrain.grid_coordinates()
    row, col = np.unravel_index(np.argmax(heights), heights.shape)
    unwrapped = env.unwrapped
    qpos = unwrapped.init_qpos.copy()
    qpos[:3] = coords[col], coords[row], qpos[2] + heights.max() + 0.05
    unwrapped.set_state(qpos, np.zeros(unwrapped.model.nv))
    for _ in range(100):
        _, _, terminated, _, _ = env.step(np.zeros(env.action_space.shape))
        assert robot_clearance(env) > -PENETRATION_TOLERANCE_M
    assert touches_floor(env)
    assert not terminated  # healthy height counts from the hilltop, not from z = 0
    assert unwrapped.data.qpos[2] > 0.5 + 0.5 * heights.max()


def test_flat_ground_continues_beyond_the_heightfield():
    env = gymnasium.make("HopperHilly-v5", terminate_when_unhealthy=False)
    env.reset(seed=0)
    unwrapped = env.unwrapped
    qpos = unwrapped.init_qpos.copy()
    qpos[0] = terrain.FIELD_HALF_SIZE_M + 5.0
    unwrapped.set_state(qpos, np.zeros(unwrapped.model.nv))
    for _ in range(200):
        env.step(np.zeros(env.action_space.shape))
    assert robot_clearance(env) > -PENETRATION_TOLERANCE_M
    assert unwrapped.data.qpos[1] > 0.1


def test_health_is_measured_from_the_ground_under_the_torso():
    env = gymnasium.make("Walker2dHilly-v5")
    env.reset(seed=0)
    unwrapped = env.unwrapped
    peak_x, peak_height = highest_point_on_x_axis()
    standing = unwrapped.init_qpos.copy()
    standing[0] = peak_x
    standing[1] += peak_height
    unwrapped.set_state(standing, np.zeros(unwrapped.model.nv))
    assert standing[1] > unwrapped._healthy_z_range[1]  # the stock absolute range would call this unhealthy
    assert unwrapped.is_healthy
    slumped = standing.copy()
    slumped[1] = peak_height + 0.5  # above the stock minimum of 0.8, but only 0.5 m over the hilltop
    unwrapped.set_state(slumped, np.zeros(unwrapped.model.nv))
    assert not unwrapped.is_healthy


@pytest.mark.parametrize("env_id", PAPER_TASKS)
def test_paper_task_constructs_and_steps(env_id):
    env = gymnasium.make(env_id)
    observation, _ = env.reset(seed=0)
    assert observation.shape == env.observation_space.shape
    env.action_space.seed(0)
    for _ in range(5):
        observation, reward, _, _, _ = env.step(env.action_space.sample())
        assert observation.shape == env.observation_space.shape
        assert np.all(np.isfinite(observation)) and np.isfinite(reward)


@pytest.mark.parametrize("hilly_id", sorted(HILLY_TO_PLAIN))
def test_spaces_match_the_plain_task(hilly_id):
    hilly, plain = gymnasium.make(hilly_id), gymnasium.make(HILLY_TO_PLAIN[hilly_id])
    assert hilly.observation_space.shape == plain.observation_space.shape
    assert hilly.action_space == plain.action_space


def test_pickled_env_keeps_its_terrain_and_kwargs():
    env = gymnasium.make("HopperHilly-v5", difficulty=0.5, terrain_seed=3, healthy_reward=2.0).unwrapped
    copy = pickle.loads(pickle.dumps(env))
    assert (copy.difficulty, copy.terrain_seed, copy._healthy_reward) == (0.5, 3, 2.0)
    np.testing.assert_array_equal(copy.terrain_heights, env.terrain_heights)


@pytest.mark.parametrize("difficulty", [0, -0.5, math.nan, math.inf, "1"])
def test_bad_difficulty_raises(difficulty):
    with pytest.raises(ValueError, match="difficulty must be a finite number > 0"):
        terrain.terrain_heights(difficulty)
    with pytest.raises(ValueError, match="difficulty must be a finite number > 0"):
        gymnasium.make("HopperHilly-v5", difficulty=difficulty)


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_bad_terrain_seed_raises(seed):
    with pytest.raises(ValueError, match="terrain_seed must be an integer >= 0"):
        gymnasium.make("HopperHilly-v5", terrain_seed=seed)
