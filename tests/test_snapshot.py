"""Environment snapshots: a snapshot restored into a fresh environment continues exactly like the original."""
import gymnasium as gym
import numpy as np
import pytest

from gpo_mpi import snapshot
from gpo_mpi.rollout import EnvSpec


def steps(env, actions):
    """Observations, rewards and ends for the given actions, resetting (unseeded) where an episode ends."""
    record = []
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        record.append((obs.copy(), reward, terminated, truncated))
        if terminated or truncated:
            obs, _ = env.reset()
            record.append((obs.copy(), 0.0, False, False))
    return record


# A horizon shorter than the 100 steps compared: the time-limit counter and the reset noise are exercised too.
@pytest.mark.parametrize("name", ["Hopper-v5", "HalfCheetah-v5", "Walker2d-v5", "HopperHilly-v5", "Ant-v5",
                                  "Pendulum-v1"])
def test_a_restored_snapshot_continues_exactly(name):
    spec = EnvSpec(name, horizon=70)
    original, fresh = spec.make(), spec.make()
    rng = np.random.default_rng(0)
    original.reset(seed=1)
    fresh.reset(seed=2)
    steps(original, rng.uniform(-1, 1, (40,) + original.action_space.shape))  # into the first episode
    assert snapshot.capturable(original)
    saved = snapshot.capture(original)
    actions = rng.uniform(-1, 1, (100,) + original.action_space.shape)
    expected = steps(original, actions)
    snapshot.restore(fresh, saved)
    got = steps(fresh, actions)
    assert len(got) == len(expected) > 100  # an episode ended within the window
    for (obs, reward, terminated, truncated), (obs2, reward2, terminated2, truncated2) in zip(expected, got):
        np.testing.assert_array_equal(obs2, obs)
        assert (reward2, terminated2, truncated2) == (reward, terminated, truncated)


def test_a_snapshot_survives_being_stored_as_a_checkpoint_stores_it(tmp_path):
    from conftest import stored_and_read
    spec = EnvSpec("Hopper-v5")
    original, fresh = spec.make(), spec.make()
    original.reset(seed=3)
    fresh.reset(seed=4)
    original.step(np.zeros(3))
    snapshot.restore(fresh, stored_and_read(snapshot.capture(original), tmp_path))
    np.testing.assert_array_equal(fresh.step(np.ones(3))[0], original.step(np.ones(3))[0])


class Counter(gym.Env):
    """A user environment with state gpo-mpi cannot see."""
    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,))
    action_space = gym.spaces.Box(-1, 1, (1,))

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.count = 0
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action):
        self.count += 1
        return np.full(1, self.count, dtype=np.float32), 0.0, False, False, {}


class CapturedCounter(Counter):
    def gpo_get_state(self):
        return self.count

    def gpo_set_state(self, state):
        self.count = state


def test_user_environments_are_captured_only_through_the_protocol():
    assert not snapshot.capturable(gym.wrappers.TimeLimit(Counter(), 10))
    env, fresh = gym.wrappers.TimeLimit(CapturedCounter(), 10), gym.wrappers.TimeLimit(CapturedCounter(), 10)
    assert snapshot.capturable(env)
    env.reset()
    fresh.reset()
    for _ in range(4):
        env.step(np.zeros(1))
    snapshot.restore(fresh, snapshot.capture(env))
    assert fresh.step(np.zeros(1))[0][0] == 5
    assert [fresh.step(np.zeros(1))[3] for _ in range(5)] == [False] * 4 + [True]  # the TimeLimit count came along


def test_an_unknown_wrapper_makes_an_environment_uncapturable():
    env = gym.wrappers.ClipReward(EnvSpec("Pendulum-v1").make(), -1, 1)
    assert snapshot.capturable(EnvSpec("Pendulum-v1").make()) and not snapshot.capturable(env)


class CountingWrapper(gym.Wrapper):
    """A user's wrapper with state of its own, kept through the protocol."""

    def __init__(self, env):
        super().__init__(env)
        self.seen = 0

    def step(self, action):
        self.seen += 1
        return self.env.step(action)

    def gpo_get_state(self):
        return {"seen": self.seen}

    def gpo_set_state(self, state):
        self.seen = state["seen"]


def test_the_protocol_is_what_is_stored_for_an_environment_or_wrapper_that_has_it():
    env = CountingWrapper(gym.wrappers.TimeLimit(CapturedCounter(), 10))
    assert snapshot.capturable(env)
    env.reset()
    for _ in range(3):
        env.step(np.zeros(1))
    taken = snapshot.capture(env)
    assert taken[0] == {"protocol": {"seen": 3}} and taken[-1] == {"protocol": 3}
    fresh = CountingWrapper(gym.wrappers.TimeLimit(CapturedCounter(), 10))
    fresh.reset()
    snapshot.restore(fresh, taken)
    assert fresh.seen == 3 and fresh.step(np.zeros(1))[0][0] == 4
    plain = CountingWrapper(EnvSpec("Pendulum-v1").make())  # the protocol wrapper around a plain environment
    plain.reset(seed=0)
    assert snapshot.capture(plain)[0] == {"protocol": {"seen": 0}}
    with pytest.raises(ValueError, match=r"^the snapshot has 5 layers, the environment 2$"):
        snapshot.restore(gym.wrappers.TimeLimit(CapturedCounter(), 10), snapshot.capture(plain))


class HasData(Counter):
    """Not MuJoCo, but with a `data` attribute."""
    data = np.zeros(3)


def test_only_mujoco_environments_are_captured_as_mujoco():
    assert not snapshot.capturable(gym.wrappers.TimeLimit(HasData(), 10))


def test_a_snapshot_of_a_plain_environment_is_independent_of_it_and_storable():
    """Changing the environment's arrays in place after a capture (or after a restore) changes neither the
    snapshot nor what it restores; what it holds is what a checkpoint can store."""
    from gpo_mpi import statefile
    env = EnvSpec("Pendulum-v1").make()
    env.reset(seed=1)
    taken = snapshot.capture(env)
    assert statefile.storable(taken)
    state = env.unwrapped.state.copy()
    env.unwrapped.state += 1.0  # in place
    snapshot.restore(env, taken)
    np.testing.assert_array_equal(env.unwrapped.state, state)
    env.unwrapped.state += 1.0
    snapshot.restore(env, taken)
    np.testing.assert_array_equal(env.unwrapped.state, state)
