"""Sampling: environments, batches, episode records, observation normalization."""
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

from gpo_mpi.networks import GaussianPolicy, Selector, flat_parameters, load_flat_parameters, numpy_forward_stacked
from gpo_mpi.rollout import Batch, EnvSpec, NonFiniteError, ObsNormalizer, Sampler, UnusableEnvironment


def sample(env_id="Pendulum-v1", n_envs=2, horizon=7, steps=60, seed=0):
    sampler = Sampler(EnvSpec(env_id, horizon=horizon), n_envs, seed, "member 3")
    obs_dim, act_dim = sampler.raw_obs.shape[1], sampler.envs.single_action_space.shape[0]
    torch.manual_seed(0)
    policy = GaussianPolicy(obs_dim, act_dim)
    normalizer = ObsNormalizer(obs_dim, clip=10.0)
    normalizer.update_from_sums(ObsNormalizer.sums(np.random.default_rng(0).normal(size=(50, obs_dim))))
    batch, raw = sampler.sample(policy, normalizer, steps)
    return sampler, policy, normalizer, batch, raw


def test_batch_layout_time_limits_and_final_observations():
    sampler, policy, normalizer, batch, raw = sample()
    assert batch.obs.shape == (60, 3) and batch.actions.shape == (60, 1) and batch.obs.dtype == np.float32
    column_ends = np.zeros(60, bool)
    column_ends[[29, 59]] = True
    time_limits = np.zeros(60, bool)
    for column in range(2):
        time_limits[column * 30 + np.arange(6, 30, 7)] = True  # Pendulum never terminates
    np.testing.assert_array_equal(batch.truncated, time_limits | column_ends)
    assert not batch.terminated.any()
    for t in range(59):
        if column_ends[t]:
            continue
        if time_limits[t]:
            # the final observation of the episode, not the reset one that follows
            assert not np.allclose(batch.next_obs[t], batch.obs[t + 1])
        else:
            np.testing.assert_array_equal(batch.next_obs[t], batch.obs[t + 1])
    np.testing.assert_allclose(normalizer(raw[:2]), batch.obs[[0, 30]])  # raw rows are time-major


def test_behaviour_log_probs_and_episode_returns():
    sampler, policy, normalizer, batch, _ = sample()
    with torch.no_grad():
        expected = policy.log_prob(torch.from_numpy(batch.obs), torch.from_numpy(batch.actions)).numpy()
    np.testing.assert_allclose(batch.log_probs, expected, rtol=1e-6)
    returns, lengths = sampler.episodes.take()
    # 4 complete episodes of 7 steps per column, in the order they ended (columns interleaved)
    per_column = [batch.rewards[c * 30:c * 30 + 28].reshape(4, 7).sum(1) for c in range(2)]
    np.testing.assert_allclose(np.sort(returns), np.sort(np.concatenate(per_column)), rtol=1e-5)
    np.testing.assert_array_equal(lengths, 7)
    assert sampler.episodes.take()[0].size == 0  # taken once


def test_sampling_is_seeded():
    first, second, other = (sample(seed=s)[3] for s in (5, 5, 6))
    np.testing.assert_array_equal(first.actions, second.actions)
    np.testing.assert_array_equal(first.obs, second.obs)
    assert not np.array_equal(first.actions, other.actions)


def test_batch_rows_round_trip():
    batch = sample()[3]
    back = Batch.from_rows(batch.to_rows(), obs_dim=3)
    for name in Batch._fields:
        np.testing.assert_array_equal(getattr(back, name), getattr(batch, name), err_msg=name)
        assert getattr(back, name).dtype == getattr(batch, name).dtype


def test_normalizer_merges_blocks_like_one():
    rng = np.random.default_rng(1)
    data = rng.normal(3.0, 2.0, size=(1000, 4))
    merged = ObsNormalizer(4, clip=5.0)
    for block in np.array_split(data, [100, 700]):
        merged.update_from_sums(ObsNormalizer.sums(block))
    np.testing.assert_allclose(merged.mean, data.mean(0), rtol=1e-10)
    np.testing.assert_allclose(merged.var, data.var(0), rtol=1e-10)
    normalized = merged(data)
    assert normalized.dtype == np.float32 and np.abs(normalized).max() <= 5.0
    np.testing.assert_allclose(normalized.mean(0), 0.0, atol=1e-2)
    restored = ObsNormalizer(4, clip=5.0)
    restored.load_state(merged.state())
    np.testing.assert_array_equal(restored(data), normalized)
    off = ObsNormalizer(4, clip=5.0, enabled=False)
    off.update_from_sums(ObsNormalizer.sums(data))
    np.testing.assert_array_equal(off(data), data.astype(np.float32))


def test_flat_parameters_round_trip():
    policy, other = GaussianPolicy(5, 2), GaussianPolicy(5, 2)
    vector = flat_parameters(policy)
    assert vector.dtype == np.float32 and vector.shape == (5 * 64 + 64 + 64 * 64 + 64 + 64 * 2 + 2 + 2,)
    load_flat_parameters(other, vector)
    obs = torch.randn(4, 5)
    torch.testing.assert_close(other(obs)[0], policy(obs)[0])
    with torch.no_grad():  # the module holds a copy, not a view of the vector
        next(other.parameters()).add_(1.0)
    np.testing.assert_array_equal(vector, flat_parameters(policy))
    with pytest.raises(ValueError, match="flat parameter vector has shape"):
        load_flat_parameters(other, vector[:-1])


def test_numpy_mean_matches_torch():
    policy = GaussianPolicy(11, 3)
    obs = np.random.default_rng(2).normal(size=(6, 11)).astype(np.float32)
    with torch.no_grad():
        expected = policy(torch.from_numpy(obs))[0].numpy()
    np.testing.assert_allclose(policy.numpy_mean()(obs), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("selector_hidden", [(32, 32), (16,)])  # the same depth as the parents' or not
def test_stacked_numpy_forward_matches_each_network_in_torch(selector_hidden):
    torch.manual_seed(4)
    nets = [Selector(11, selector_hidden).logit_net, GaussianPolicy(11, 3).mean_net,
            GaussianPolicy(11, 3, hidden=(64, 64)).mean_net]
    with torch.no_grad():  # biases as training leaves them, not zero: each must reach its own outputs only
        for net in nets:
            for layer in net:
                if isinstance(layer, torch.nn.Linear):
                    layer.bias.normal_()
    obs = np.random.default_rng(2).normal(size=(6, 11)).astype(np.float32)
    outputs = numpy_forward_stacked(nets)(obs)
    assert [output.shape for output in outputs] == [(6, 2), (6, 3), (6, 3)]
    for net, output in zip(nets, outputs):
        with torch.no_grad():
            np.testing.assert_allclose(output, net(torch.from_numpy(obs)).numpy(), rtol=1e-5, atol=1e-6)


def test_unusable_environments_are_refused():
    with pytest.raises(UnusableEnvironment, match="cannot make environment 'NoSuchEnv-v9'"):
        EnvSpec("NoSuchEnv-v9").make()
    with pytest.raises(UnusableEnvironment, match="has a Discrete action space; gpo-mpi needs a continuous"):
        EnvSpec("CartPole-v1").make()


def test_a_user_environment_class_with_keyword_arguments():
    env = EnvSpec("user_envs:ReachTarget", {"dim": 3, "target": 0.2}, horizon=7).make()
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3,) and env.action_space.shape == (3,)
    for step in range(7):
        obs, reward, terminated, truncated, _ = env.step(np.zeros(3, np.float32))
    assert truncated and step == 6  # the horizon's time limit, before the class's own 25 steps
    assert reward == pytest.approx(-np.sum((obs - 0.2) ** 2))
    with pytest.raises(UnusableEnvironment, match="with env_kwargs {'size': 3}: .*unexpected keyword argument"):
        EnvSpec("user_envs:ReachTarget", {"size": 3}).make()
    with pytest.raises(UnusableEnvironment, match="cannot import 'no_such_package.envs' \\(No module named"):
        EnvSpec("no_such_package.envs:Thing").make()
    with pytest.raises(UnusableEnvironment, match="cannot make environment 'user_envs:NoSuchClass-v0'"):
        EnvSpec("user_envs:NoSuchClass-v0").make()


class NaNAfterThreeSteps(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (2,))
    action_space = gym.spaces.Box(-1, 1, (1,))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.full(2, np.nan if self.t >= 3 else 0.0, np.float32)
        return obs, 1.0, False, False, {}


def test_non_finite_observations_name_member_and_environment():
    gym.register("NaNAfterThreeSteps-v0", entry_point=NaNAfterThreeSteps, disable_env_checker=True)
    sampler = Sampler(EnvSpec("NaNAfterThreeSteps-v0"), 1, 0, "member 5")
    with pytest.raises(NonFiniteError, match="member 5: environment NaNAfterThreeSteps-v0 returned non-finite"):
        sampler.sample(GaussianPolicy(2, 1), ObsNormalizer(2, 10.0), 10)


def test_gaussian_log_prob_matches_torch_distributions():
    from gpo_mpi.networks import gaussian_log_prob
    mean, actions = torch.randn(2, 7, 3, dtype=torch.float64)
    log_std = torch.randn(3, dtype=torch.float64)
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(actions).sum(-1)
    torch.testing.assert_close(gaussian_log_prob(mean, log_std, actions), expected)


pendulum = EnvSpec("Pendulum-v1", horizon=10)


def test_evaluation_runs_whole_episodes():
    from gpo_mpi.evaluate import episode_returns
    torch.manual_seed(0)
    policy, normalizer = GaussianPolicy(3, 1), ObsNormalizer(3, 10.0)
    returns = episode_returns(policy, normalizer, pendulum, episodes=3, seed=4)
    assert returns.shape == (3,) and np.all(returns < 0)  # Pendulum's rewards are costs
    np.testing.assert_array_equal(returns, episode_returns(policy, normalizer, pendulum, 3, 4))
    deterministic = episode_returns(policy, normalizer, pendulum, 3, 4, deterministic=True)
    assert not np.array_equal(deterministic, returns)


def test_halfcheetah_builds_quietly_and_other_mujoco_warnings_still_show(tmp_path):
    code = ("import mujoco\n"
            "from gpo_mpi.rollout import EnvSpec\n"
            "for _ in range(3):\n"
            "    EnvSpec('HalfCheetah-v5').make().close()\n"
            "mujoco.get_mju_user_warning()('Nan, Inf or huge value in QACC at DOF 0')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "MuJoCo warning: Nan, Inf or huge value in QACC at DOF 0"
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
