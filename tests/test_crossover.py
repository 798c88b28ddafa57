"""CROSSOVER in one process: trajectories, the selector, DAgger, parameter-space crossover."""

import numpy as np
import pytest
import torch

from gpo_mpi import crossover
from gpo_mpi.config import RunConfig
from gpo_mpi.learner import gaussian_kl, minibatch_indices
from gpo_mpi.networks import GaussianPolicy, Selector
from gpo_mpi.rollout import Batch, EnvSpec, EpisodeRecorder, ObsNormalizer, Sampler


def synthetic_batch(center: float, n_steps=200, episode=20, seed=0, reward_scale=1.0) -> Batch:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n_steps, 3)).astype(np.float32)
    obs[:, 0] += center
    ends = np.zeros(n_steps, bool)
    ends[episode - 1::episode] = True
    return Batch(obs=obs, actions=np.zeros((n_steps, 1), np.float32), log_probs=np.zeros(n_steps, np.float32),
                 rewards=(reward_scale * rng.random(n_steps)).astype(np.float32), next_obs=obs,
                 terminated=ends, truncated=np.zeros(n_steps, bool))


def test_trajectories_and_the_best_of_them():
    batch = synthetic_batch(0.0, n_steps=10, episode=4)
    batch = batch._replace(rewards=np.array([1, 1, 1, 1, 5, 5, 5, 5, 2, 2], np.float32))
    assert crossover.trajectory_bounds(batch) == [(0, 4), (4, 8), (8, 10)]  # the last one cut off
    trajectories = crossover.batch_trajectories(batch)
    assert [episode_return for _, episode_return in trajectories] == [4.0, 20.0, 4.0]
    rng = np.random.default_rng(0)
    states, returns = crossover.selector_data(trajectories, fraction=0.6, max_states=0, rng=rng)  # 2 of 3
    np.testing.assert_array_equal(states, np.concatenate([batch.obs[4:8], batch.obs[0:4]]))
    np.testing.assert_array_equal(returns, [20] * 4 + [4] * 4)
    # at most 3 states: drawn from those 8, in their order, each with its trajectory's return
    few_states, few_returns = crossover.selector_data(trajectories, fraction=0.6, max_states=3, rng=rng)
    assert len(few_states) == 3
    positions = [int(np.flatnonzero((states == row).all(axis=1))[0]) for row in few_states]
    assert positions == sorted(positions)
    np.testing.assert_array_equal(few_returns, returns[positions])


def test_recorder_splits_at_real_episode_ends_across_batches():
    """Episodes that run over batch cuts come out whole, thinned to every stride-th state."""
    recorder = EpisodeRecorder(n_envs=2, stride=2)
    steps = np.arange(2 * 6 * 2, dtype=np.float32).reshape(2, 6, 2, 1)  # two batches of 6 steps x 2 columns
    rewards = np.ones((6, 2), np.float32)
    ended = np.zeros((2, 6, 2), bool)
    ended[0, 3, 0] = True  # column 0: an episode of 4 steps inside the first batch ...
    ended[1, 4, 0] = True  # ... then one of 2 + 5 = 7 steps over the cut
    ended[1, 1, 1] = True  # column 1: 6 + 2 = 8 steps over the cut
    recorder.add(steps[0], rewards, ended[0])
    recorder.add(steps[1], 2 * rewards, ended[1])
    finished = recorder.take()
    assert [episode_return for _, episode_return in finished] == [4.0, 2 + 5 * 2, 6 + 2 * 2]
    column_0_first = steps[0, 0:4, 0, 0]
    column_0_second = np.concatenate([steps[0, 4:6, 0, 0], steps[1, 0:5, 0, 0]])
    column_1 = np.concatenate([steps[0, :, 1, 0], steps[1, 0:2, 1, 0]])
    for (states, _), whole in zip(finished, [column_0_first, column_0_second, column_1]):
        np.testing.assert_array_equal(states[:, 0], whole[::2])  # positions 0, 2, 4, ... of the episode
    assert recorder.take() == []
    recorder.add(steps[0], rewards, np.zeros((6, 2), bool))
    recorder.restart(2)  # unfinished episodes are dropped when the environments restart
    recorder.add(steps[1], rewards, ended[1])
    np.testing.assert_array_equal([len(states) for states, _ in recorder.take()], [3, 1])  # 5 and 2 steps, halved


def test_the_recorder_sees_what_the_sampler_samples():
    recorder = EpisodeRecorder(n_envs=2, stride=1)
    sampler = Sampler(EnvSpec("Pendulum-v1", horizon=10), 2, 0, "recorder test", recorder)
    batch, _ = sampler.sample(GaussianPolicy(3, 1), ObsNormalizer(3, 10.0), 30)  # 15 steps per column
    finished = recorder.take()
    returns, _ = sampler.episodes.take()
    assert len(finished) == 2 and all(len(states) == 10 for states, _ in finished)
    np.testing.assert_allclose(sorted(r for _, r in finished), sorted(returns), rtol=1e-5)
    np.testing.assert_array_equal(finished[0][0], batch.obs[:10])  # column 0's first episode


def test_return_weights():
    np.testing.assert_allclose(crossover.return_weights(np.array([2.0, 4.0, 6.0])), [0.0, 1.0, 2.0])
    np.testing.assert_allclose(crossover.return_weights(np.array([3.0, 3.0])), [1.0, 1.0])


def test_selector_separates_parents_acting_in_different_regions():
    config = RunConfig(selector_epochs=20)
    batch_x, batch_y = synthetic_batch(+2.0, seed=1), synthetic_batch(-2.0, seed=2)
    states = np.concatenate([batch_x.obs, batch_y.obs])
    labels = np.concatenate([np.zeros(200), np.ones(200)])
    torch.manual_seed(0)
    selector = Selector(3)
    crossover.train_selector(selector, states, labels, np.ones(400), config, torch.Generator().manual_seed(0))
    test_x, test_y = synthetic_batch(+2.0, seed=3).obs, synthetic_batch(-2.0, seed=4).obs
    with torch.no_grad():
        picks_y_for_x = torch.softmax(selector(torch.from_numpy(test_x)), -1)[:, 1].numpy()
        picks_y_for_y = torch.softmax(selector(torch.from_numpy(test_y)), -1)[:, 1].numpy()
    assert (picks_y_for_x < 0.5).mean() > 0.95 and (picks_y_for_y > 0.5).mean() > 0.95


def test_return_weights_decide_where_parents_overlap():
    """In a shared region the parent whose trajectories there earned more is chosen (the default
    training on the default number of states: selector_states from each parent)."""
    config = RunConfig()
    n = config.selector_states
    states = np.random.default_rng(5).normal(size=(2 * n, 3)).astype(np.float32)
    labels = np.concatenate([np.zeros(n), np.ones(n)])
    weights = np.concatenate([np.full(n, 0.1), np.full(n, 1.9)])
    torch.manual_seed(0)
    selector = Selector(3)
    crossover.train_selector(selector, states, labels, weights, config, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.softmax(selector(torch.from_numpy(states)), -1)[:, 1].mean() > 0.8


def test_selector_patience_stops_early_and_keeps_the_best_epoch(monkeypatch):
    """Labels that are pure noise: the held-out loss stops improving within a few epochs, training
    stops `selector_patience` epochs later, and the selector left is the one with the lowest held-out
    loss seen (the loss returned, recomputed here on the same held-out rows)."""
    rng = np.random.default_rng(7)
    states = rng.normal(size=(400, 3)).astype(np.float32)
    labels, weights = rng.integers(0, 2, 400), np.ones(400)
    epochs_run = []
    monkeypatch.setattr(crossover, "minibatch_indices",
                        lambda *args: epochs_run.append(1) or iter(list(minibatch_indices(*args))))

    config = RunConfig(selector_epochs=300, selector_patience=3, selector_holdout=0.25, crossover_minibatch=64)
    torch.manual_seed(0)
    selector = Selector(3)
    kept_loss = crossover.train_selector(selector, states, labels, weights, config, torch.Generator().manual_seed(0))
    assert 4 <= len(epochs_run) < 100  # at least patience + 1 epochs, far fewer than 300
    held_out = torch.randperm(400, generator=torch.Generator().manual_seed(0))[:100]
    with torch.no_grad():
        log_probs = torch.log_softmax(selector(torch.from_numpy(states)[held_out]), -1)
        recomputed = -log_probs.gather(1, torch.from_numpy(labels)[held_out, None]).mean().item()
    assert abs(recomputed - kept_loss) < 1e-6

    # without patience every epoch runs and nothing is held out
    epochs_run.clear()
    crossover.train_selector(Selector(3), states, labels, weights, RunConfig(selector_epochs=12, selector_patience=0),
                             torch.Generator().manual_seed(0))
    assert len(epochs_run) == 12


def test_selector_with_patience_still_separates_parents():
    config = RunConfig(selector_epochs=100, selector_patience=5, crossover_minibatch=256)
    batch_x, batch_y = synthetic_batch(+2.0, seed=1), synthetic_batch(-2.0, seed=2)
    states = np.concatenate([batch_x.obs, batch_y.obs])
    labels = np.concatenate([np.zeros(200), np.ones(200)])
    torch.manual_seed(0)
    selector = Selector(3)
    crossover.train_selector(selector, states, labels, np.ones(400), config, torch.Generator().manual_seed(0))
    with torch.no_grad():
        picks_y_for_x = torch.softmax(selector(torch.from_numpy(synthetic_batch(+2.0, seed=3).obs)), -1)[:, 1]
        picks_y_for_y = torch.softmax(selector(torch.from_numpy(synthetic_batch(-2.0, seed=4).obs)), -1)[:, 1]
    assert (picks_y_for_x < 0.5).float().mean() > 0.95 and (picks_y_for_y > 0.5).float().mean() > 0.95


def test_expert_acts_with_the_parent_the_selector_picks():
    torch.manual_seed(0)
    parents = (GaussianPolicy(3, 2), GaussianPolicy(3, 2))
    selector = Selector(3)
    with torch.no_grad():  # always the second parent
        selector.logit_net[-1].bias.copy_(torch.tensor([-20.0, 20.0]))
    expert = crossover.Expert(selector, parents)
    obs = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    means, log_stds = expert.labels(obs, np.random.default_rng(0))
    with torch.no_grad():
        np.testing.assert_allclose(means, parents[1](torch.from_numpy(obs))[0].numpy(), rtol=1e-6)
    np.testing.assert_array_equal(expert.choose_parents(obs, np.random.default_rng(1)), 1)


def test_argmax_expert_labels_by_the_more_likely_parent():
    """pi_S(second | s) = sigmoid(s_0 * 4): argmax takes the second parent exactly where s_0 > 0;
    a draw from pi_S gives the second parent that often on average."""
    torch.manual_seed(0)
    parents = (GaussianPolicy(3, 2), GaussianPolicy(3, 2))
    selector = Selector(3, hidden=())
    with torch.no_grad():
        selector.logit_net[0].weight.copy_(torch.tensor([[-2.0, 0.0, 0.0], [2.0, 0.0, 0.0]]))
        selector.logit_net[0].bias.zero_()
    obs = np.random.default_rng(2).normal(size=(4000, 3)).astype(np.float32)
    argmax_choice = crossover.Expert(selector, parents, "argmax").choose_parents(obs, np.random.default_rng(3))
    np.testing.assert_array_equal(argmax_choice, (obs[:, 0] > 0).astype(int))
    drawn = crossover.Expert(selector, parents, "sample").choose_parents(obs, np.random.default_rng(3))
    probabilities = 1 / (1 + np.exp(-4 * obs[:, 0]))
    assert abs(drawn.mean() - probabilities.mean()) < 0.03 and not np.array_equal(drawn, argmax_choice)
    means, _ = crossover.Expert(selector, parents, "argmax").labels(obs, np.random.default_rng(3))
    with torch.no_grad():
        both = [parent(torch.from_numpy(obs))[0].numpy() for parent in parents]
    # the expert's numpy forward against torch's: equal to float32 rounding
    np.testing.assert_allclose(means, np.where((obs[:, 0] > 0)[:, None], both[1], both[0]), rtol=1e-5, atol=1e-7)


def test_dagger_drives_the_child_to_a_fixed_expert():
    """Both parents the same fixed policy: the child's KL to it on the expert's states falls."""
    config = RunConfig(env="Pendulum-v1", expert_steps=400, dagger_iterations=3, dagger_steps=100, dagger_epochs=20,
                       dagger_lr=3e-3, selector_epochs=2)
    torch.manual_seed(1)
    expert_policy = GaussianPolicy(3, 1, init_log_std=-0.5)
    with torch.no_grad():
        expert_policy.mean_net[-1].weight.mul_(100.0)  # a policy with real opinions
    child = GaussianPolicy(3, 1)
    sampler = Sampler(EnvSpec("Pendulum-v1", horizon=50), 1, 0, "crossover test")
    normalizer = ObsNormalizer(3, 10.0)
    batch, _ = sampler.sample(expert_policy, normalizer, 200)

    def kl_to_expert(states):
        with torch.no_grad():
            child_mean, child_log_std = child(torch.from_numpy(states))
            expert_mean, expert_log_std = expert_policy(torch.from_numpy(states))
            return gaussian_kl(child_mean, child_log_std, expert_mean, expert_log_std).mean().item()

    before = kl_to_expert(batch.obs)
    data = crossover.selector_data(crossover.batch_trajectories(batch), 0.6, 0, np.random.default_rng(0))
    record = crossover.state_space_crossover(expert_policy, expert_policy, data, data, child, sampler, normalizer,
                                             config, seed=0)
    after = kl_to_expert(batch.obs)
    assert after < 0.2 * before
    assert record.env_steps == 400 + 3 * 100 == config.crossover_steps_per_child
    assert record.imitation_loss < before


def test_parameter_space_crossover_takes_each_layer_from_one_parent():
    torch.manual_seed(2)
    parent_x, parent_y, child = GaussianPolicy(4, 2), GaussianPolicy(4, 2), GaussianPolicy(4, 2)
    seen_sources = set()
    for seed in range(8):
        sources = crossover.parameter_space_crossover(parent_x, parent_y, child, np.random.default_rng(seed))
        assert sorted(sources) == ["log_std", "mean_net.0", "mean_net.2", "mean_net.4"]
        seen_sources.update(sources.values())
        named_x, named_y = dict(parent_x.named_parameters()), dict(parent_y.named_parameters())
        for name, parameter in child.named_parameters():
            layer = name.rsplit(".", 1)[0] if name != "log_std" else name
            source = (named_x, named_y)[sources[layer]]
            torch.testing.assert_close(parameter, source[name], rtol=0, atol=0)
    assert seen_sources == {0, 1}


def test_state_space_crossover_is_a_function_of_its_seed():
    """Two different parents, the expert drawing from pi_S, minibatches: the same seed gives the same child and
    record bit for bit, another seed another child; the record says what the crossover did."""
    config = RunConfig(env="Pendulum-v1", expert_steps=100, dagger_iterations=2, dagger_steps=50, dagger_epochs=2,
                       selector_epochs=2, expert_choice="sample", crossover_minibatch=32)
    torch.manual_seed(4)
    parents = (GaussianPolicy(3, 1, init_log_std=-1.0), GaussianPolicy(3, 1, init_log_std=0.3))

    def crossover_with(seed):
        normalizer = ObsNormalizer(3, 10.0)
        data = []
        for index, parent in enumerate(parents):
            batch, _ = Sampler(EnvSpec("Pendulum-v1", horizon=20), 1, index, "parent").sample(parent, normalizer, 100)
            data.append(crossover.selector_data(crossover.batch_trajectories(batch), 1.0, 0,
                                                np.random.default_rng(index)))
        child = GaussianPolicy(3, 1)
        child.load_state_dict(parents[0].state_dict())
        sampler = Sampler(EnvSpec("Pendulum-v1", horizon=20), 1, 7, "crossover test")
        record = crossover.state_space_crossover(*parents, *data, child, sampler, normalizer, config, seed)
        return torch.cat([p.detach().flatten() for p in child.parameters()]), record

    first, record = crossover_with(3)
    again, record_again = crossover_with(3)
    assert torch.equal(first, again) and record == record_again
    assert not torch.equal(crossover_with(4)[0], first)
    assert record.env_steps == 100 + 2 * 50 == config.crossover_steps_per_child
    assert np.isfinite(record.selector_loss) and np.isfinite(record.imitation_loss)
    assert 0.0 < record.second_parent_share < 1.0  # pi_S drew both parents on the expert's 100 states


def test_the_expert_acts_with_the_chosen_parents_whole_gaussian():
    """Forced to one parent, the expert's labels carry that parent's log-std, and its actions are independent
    draws around the parent's mean with the parent's standard deviation."""
    torch.manual_seed(0)
    parents = (GaussianPolicy(3, 2, init_log_std=-1.0), GaussianPolicy(3, 2, init_log_std=0.5))
    obs = np.repeat(np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32), 20000, axis=0)
    for chosen, bias in ((0, [20.0, -20.0]), (1, [-20.0, 20.0])):
        selector = Selector(3)
        with torch.no_grad():
            selector.logit_net[-1].bias.copy_(torch.tensor(bias))
        expert = crossover.Expert(selector, parents, "sample")
        means, log_stds = expert.labels(obs, np.random.default_rng(1))
        np.testing.assert_array_equal(log_stds, np.broadcast_to(parents[chosen].log_std.detach().numpy(), (40000, 2)))
        actions = expert.act(obs, np.random.default_rng(2)).reshape(2, 20000, 2)
        noise = (actions - means.reshape(2, 20000, 2)) / np.exp(log_stds[0])
        assert np.all(np.abs(noise.mean(axis=1)) < 0.03) and np.all(np.abs(noise.std(axis=1) - 1) < 0.03)
        assert abs(np.corrcoef(noise[0, :, 0], noise[0, :, 1])[0, 1]) < 0.03  # dimensions drawn apart


def test_the_child_samples_from_its_own_gaussian_during_dagger():
    torch.manual_seed(0)
    child = GaussianPolicy(3, 2, init_log_std=-0.7)
    obs = np.repeat(np.random.default_rng(0).normal(size=(1, 3)).astype(np.float32), 20000, axis=0)
    actions = crossover.child_sampling_actions(child)(obs, np.random.default_rng(1))
    with torch.no_grad():
        mean = child(torch.from_numpy(obs[:1]))[0].numpy()
    noise = (actions - mean) / np.exp(-0.7)
    assert np.all(np.abs(noise.mean(axis=0)) < 0.03) and np.all(np.abs(noise.std(axis=0) - 1) < 0.03)
    assert abs(np.corrcoef(noise[:, 0], noise[:, 1])[0, 1]) < 0.03


def test_make_child_runs_the_operator_the_configuration_names():
    """Without C the child is a copy of the fitter parent; the parameter operator takes each layer from one parent;
    the state operator imitates both (its diagnostics measured, the others' NaN)."""
    torch.manual_seed(5)
    parents = (GaussianPolicy(3, 1), GaussianPolicy(3, 1))
    assert crossover.operator_of(RunConfig(components="SM")) == "copy"
    assert crossover.operator_of(RunConfig(crossover_operator="parameter")) == "parameter"
    assert crossover.operator_of(RunConfig()) == "state"
    env, normalizer = EnvSpec("Pendulum-v1", horizon=20), ObsNormalizer(3, 10.0)
    config = RunConfig(env="Pendulum-v1", expert_steps=40, dagger_iterations=1, dagger_steps=20, dagger_epochs=1,
                       selector_epochs=1)
    flat = lambda module: torch.cat([p.detach().flatten() for p in module.parameters()])  # noqa: E731
    for fitter in (0, 1):
        child = GaussianPolicy(3, 1)
        diagnostics = crossover.make_child("copy", parents, fitter, None, child, env, normalizer, config, 0, "copy")
        assert torch.equal(flat(child), flat(parents[fitter])) and np.isnan(diagnostics).all()
    child = GaussianPolicy(3, 1)
    diagnostics = crossover.make_child("parameter", parents, 0, None, child, env, normalizer, config, 1, "parameter")
    assert np.isnan(diagnostics).all()
    for name, value in child.state_dict().items():
        assert any(torch.equal(value, parent.state_dict()[name]) for parent in parents), name
    data = []
    for index, parent in enumerate(parents):
        batch, _ = Sampler(env, 1, index, "parent").sample(parent, normalizer, 40)
        data.append(crossover.selector_data(crossover.batch_trajectories(batch), 1.0, 0, np.random.default_rng(0)))
    diagnostics = crossover.make_child("state", parents, 0, tuple(data), GaussianPolicy(3, 1), env, normalizer,
                                       config, 2, "state")
    assert np.isfinite(diagnostics[:2]).all() and 0.0 <= diagnostics[2] <= 1.0


def test_return_weights_with_a_span_under_one():
    np.testing.assert_allclose(crossover.return_weights(np.array([0.1, 0.2, 0.3])), [0.0, 1.0, 2.0])


def test_selector_data_keeps_the_best_trajectories_and_draws_states_without_replacement():
    """20 trajectories of 5 states (state value = trajectory * 10 + step), returns in 4 tied groups."""
    trajectories = [(np.array([[10.0 * t + s] for s in range(5)]), float(t % 4)) for t in range(20)]
    states, returns = crossover.selector_data(trajectories, 0.25, 0, np.random.default_rng(0))
    best = [t for t in range(20) if t % 4 == 3]  # the 5 trajectories of return 3, in order (ties: the first)
    np.testing.assert_array_equal(states[:, 0], [10.0 * t + s for t in best for s in range(5)])
    np.testing.assert_array_equal(returns, 3.0)
    one, _ = crossover.selector_data(trajectories, 0.01, 0, np.random.default_rng(0))  # at least one trajectory
    np.testing.assert_array_equal(one[:, 0], [30.0 + s for s in range(5)])
    for max_states in (1, 24, 25, 30):
        drawn, _ = crossover.selector_data(trajectories, 0.25, max_states, np.random.default_rng(1))
        assert len(drawn) == min(max_states, 25)
        assert len(np.unique(drawn)) == len(drawn) and np.all(np.diff(drawn[:, 0]) > 0)  # distinct, in order
        assert set(drawn[:, 0]) <= set(states[:, 0])


def test_make_child_is_a_function_of_its_seed_and_both_parents_give_layers():
    torch.manual_seed(6)
    parents = (GaussianPolicy(3, 1, init_log_std=-1.0), GaussianPolicy(3, 1, init_log_std=0.3))
    env, config = EnvSpec("Pendulum-v1", horizon=20), RunConfig(env="Pendulum-v1", expert_steps=40,
                                                                 dagger_iterations=1, dagger_steps=20,
                                                                 dagger_epochs=1, selector_epochs=1)
    flat = lambda module: torch.cat([p.detach().flatten() for p in module.parameters()])  # noqa: E731
    data = []
    for index, parent in enumerate(parents):
        batch, _ = Sampler(env, 1, index, "parent").sample(parent, ObsNormalizer(3, 10.0), 40)
        data.append(crossover.selector_data(crossover.batch_trajectories(batch), 1.0, 0, np.random.default_rng(0)))
    children = []
    for seed in (2, 2, 3):
        child = GaussianPolicy(3, 1)
        child.load_state_dict(parents[0].state_dict())
        crossover.make_child("state", parents, 0, tuple(data), child, env, ObsNormalizer(3, 10.0), config, seed,
                             "state")
        children.append(flat(child))
    assert torch.equal(children[0], children[1]) and not torch.equal(children[0], children[2])
    sources = set()
    for seed in range(8):
        child = GaussianPolicy(3, 1)
        crossover.make_child("parameter", parents, 0, None, child, env, ObsNormalizer(3, 10.0), config, seed, "p")
        again = GaussianPolicy(3, 1)
        crossover.make_child("parameter", parents, 0, None, again, env, ObsNormalizer(3, 10.0), config, seed, "p")
        assert torch.equal(flat(child), flat(again))
        for name, value in child.state_dict().items():  # biases start at zero in both parents: say nothing
            if not name.endswith("bias"):
                sources |= {index for index, parent in enumerate(parents)
                            if torch.equal(value, parent.state_dict()[name])}
    assert sources == {0, 1}


@pytest.mark.parametrize("child_init, child_beta, child_optimizer", [("fitter", "fitter", "fitter"),
                                                                      ("fresh", "initial", "fresh")])
def test_a_newborn_inherits_from_its_fitter_parents_row_what_the_config_says(child_init, child_beta,
                                                                              child_optimizer):
    """Parents travel as learner.MemberRows rows (beta's float64 bit for bit); the newborn takes the fitter's
    networks, beta and Adam states, or its own seed's and the initial beta."""
    import dataclasses
    from gpo_mpi.learner import Member, MemberRows, adam_state
    from gpo_mpi.networks import flat_parameters
    config = dataclasses.replace(RunConfig(population=3, policy_hidden=(16,)), child_init=child_init,
                                 child_beta=child_beta, child_optimizer=child_optimizer)
    parents = [Member.create(i, 3, 1, config, seed=10 + i) for i in range(3)]
    for parent in parents:  # an optimizer state that is not zero, and a beta that float32 would round
        parent.beta = 1.0 / (3.0 + parent.index)
        mean, log_std = parent.policy(torch.ones(2, 3))
        loss = mean.sum() + log_std.sum() + parent.critic(torch.ones(2, 3)).sum()
        loss.backward()
        parent.policy_optimizer.step()
        parent.critic_optimizer.step()
    rows = MemberRows(parents[0], optimizers=child_optimizer == "fitter")
    assert all(rows.row(parent).dtype == np.float32 for parent in parents)  # what the parent exchange moves
    columns = rows.columns(np.stack([rows.row(parent) for parent in parents]).astype(np.float32))
    assert columns["beta"].dtype == np.float64 and columns["beta"].shape == (3, 1)
    assert columns["beta"][:, 0].tolist() == [1 / 3, 1 / 4, 1 / 5]
    np.testing.assert_array_equal(columns["policy"][2], flat_parameters(parents[2].policy))
    child = crossover.newborn(1, 3, 1, columns, 2, config, seed=99)
    fresh = Member.create(1, 3, 1, config, seed=99)
    if child_init == "fitter":
        np.testing.assert_array_equal(flat_parameters(child.policy), flat_parameters(parents[2].policy))
        np.testing.assert_array_equal(flat_parameters(child.critic), flat_parameters(parents[2].critic))
        assert child.beta == 1 / 5
        np.testing.assert_array_equal(adam_state(child.policy_optimizer), adam_state(parents[2].policy_optimizer))
        np.testing.assert_array_equal(adam_state(child.critic_optimizer), adam_state(parents[2].critic_optimizer))
    else:
        np.testing.assert_array_equal(flat_parameters(child.policy), flat_parameters(fresh.policy))
        assert child.beta == config.initial_beta and "policy_optimizer" not in columns
        assert adam_state(child.policy_optimizer)[0] == 0  # no step taken
    assert child.index == 1 and torch.equal(child.generator.get_state(), fresh.generator.get_state())
    pair = crossover.parent_policies(columns, (0, 2), 3, 1, config)
    np.testing.assert_array_equal(flat_parameters(pair[1]), flat_parameters(parents[2].policy))


def test_a_batch_that_ends_at_an_episode_end_has_no_empty_trajectory():
    batch = synthetic_batch(0.0, n_steps=12, episode=4)  # episodes end at steps 4, 8 and 12
    assert crossover.trajectory_bounds(batch) == [(0, 4), (4, 8), (8, 12)]


def test_a_trajectorys_return_is_summed_in_float64():
    batch = synthetic_batch(0.0, n_steps=4, episode=4)._replace(rewards=np.array([1e8, 1, -1e8, 0], np.float32))
    assert [episode_return for _, episode_return in crossover.batch_trajectories(batch)] == [1.0]


def test_equal_returns_weigh_every_state_alike():
    weights = crossover.return_weights(np.full(5, 2.0))
    assert weights.shape == (5,) and weights.tolist() == [1.0] * 5


def test_the_selector_stops_exactly_patience_epochs_after_its_best(monkeypatch):
    """A learning rate too small to move the weights: the held-out loss is best at the first epoch and never
    improves, so training runs 1 + selector_patience epochs."""
    epochs_run = []
    monkeypatch.setattr(crossover, "minibatch_indices",
                        lambda *args: epochs_run.append(1) or iter(list(minibatch_indices(*args))))
    rng = np.random.default_rng(1)
    states, labels = rng.normal(size=(40, 3)).astype(np.float32), rng.integers(0, 2, 40)
    config = RunConfig(selector_epochs=50, selector_patience=3, selector_lr=1e-30, crossover_minibatch=64)
    crossover.train_selector(Selector(3), states, labels, np.ones(40), config, torch.Generator().manual_seed(0))
    assert len(epochs_run) == 4


def test_the_selector_trains_on_float64_states_as_on_float32():
    rng = np.random.default_rng(2)
    states, labels = rng.normal(size=(50, 3)), rng.integers(0, 2, 50)
    config = RunConfig(selector_epochs=3, selector_patience=0, crossover_minibatch=16)
    losses = []
    for dtype in (np.float64, np.float32):
        torch.manual_seed(0)
        losses.append(crossover.train_selector(Selector(3), states.astype(dtype), labels, np.ones(50), config,
                                               torch.Generator().manual_seed(0)))
    assert losses[0] == losses[1]


def two_parents_selector_data():
    """Selector data of two parents acting in different regions (synthetic batches of 40 steps)."""
    return [crossover.selector_data(crossover.batch_trajectories(synthetic_batch(center, n_steps=40)), 1.0, 0,
                                    np.random.default_rng(0)) for center in (1.0, -1.0)]


@pytest.mark.parametrize("expert_choice", ["argmax", "sample"])
def test_state_space_crossover_builds_the_selector_and_expert_the_config_names(monkeypatch, expert_choice):
    built = {}

    class RecordedSelector(Selector):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built["selector"] = self

    class RecordedExpert(crossover.Expert):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built["expert"] = self
    monkeypatch.setattr(crossover, "Selector", RecordedSelector)
    monkeypatch.setattr(crossover, "Expert", RecordedExpert)
    config = RunConfig(env="Pendulum-v1", expert_steps=20, dagger_iterations=1, dagger_steps=20, dagger_epochs=1,
                       selector_epochs=1, selector_hidden=(8,), expert_choice=expert_choice)
    env, normalizer = EnvSpec("Pendulum-v1", horizon=20), ObsNormalizer(3, 10.0)
    parents = (GaussianPolicy(3, 1), GaussianPolicy(3, 1))
    data = two_parents_selector_data()
    crossover.make_child("state", parents, 0, tuple(data), GaussianPolicy(3, 1), env, normalizer, config, 0, "t")
    layers = [module.out_features for module in built["selector"].modules() if isinstance(module, torch.nn.Linear)]
    assert layers == [8, 2] and built["expert"].choice == expert_choice


def test_a_non_finite_reward_during_crossover_names_the_childs_crossover():
    from gpo_mpi.rollout import NonFiniteError
    config = RunConfig(env="user_envs:ReachTarget", expert_steps=20, dagger_iterations=1, dagger_steps=20,
                       dagger_epochs=1, selector_epochs=1)
    env = EnvSpec("user_envs:ReachTarget", kwargs={"dim": 3, "target": float("nan")})
    parents = (GaussianPolicy(3, 3), GaussianPolicy(3, 3))
    data = two_parents_selector_data()
    with pytest.raises(NonFiniteError, match=r"^crossover for member 5: environment user_envs:ReachTarget returned "
                                             r"non-finite"):
        crossover.make_child("state", parents, 0, tuple(data), GaussianPolicy(3, 3), env, ObsNormalizer(3, 10.0),
                             config, 0, "crossover for member 5")


def test_selector_rows_travel_and_come_back_as_each_parents_data():
    """Each parent's selector data as rows and back, by member; a parent without finished episodes falls
    back on its last batch's fragments."""
    config = RunConfig(top_fraction=0.5, selector_states=0, seed=2)
    first, second = synthetic_batch(1.0, n_steps=40, episode=10, seed=1), synthetic_batch(-1.0, n_steps=30, seed=2)
    episodes = crossover.batch_trajectories(first)
    rows = np.concatenate([crossover.selector_rows(3, episodes, second, config, 0),
                           crossover.selector_rows(5, [], second, config, 0)])
    by_member = crossover.selector_data_by_member(rows)
    assert sorted(by_member) == [3, 5]
    for index, trajectories in ((3, episodes), (5, crossover.batch_trajectories(second))):
        states, returns = crossover.selector_data(trajectories, 0.5, 0, np.random.default_rng(0))
        np.testing.assert_array_equal(by_member[index][0], states)
        np.testing.assert_array_equal(by_member[index][1], returns)
        assert by_member[index][0].dtype == np.float32


def test_a_parents_selector_rows_draw_their_states_from_its_own_stream():
    """With fewer selector states than the trajectories hold, the draw is the member's stream for the round."""
    from gpo_mpi import seeds
    config = RunConfig(top_fraction=1.0, selector_states=15, seed=2)
    episodes = crossover.batch_trajectories(synthetic_batch(1.0, n_steps=40, episode=10, seed=1))
    rows = crossover.selector_rows(3, episodes, None, config, 4)
    states, returns = crossover.selector_data(episodes, 1.0, 15, seeds.selector_states(2, 3, 4))
    np.testing.assert_array_equal(rows[:, 2:], states)
    assert not np.array_equal(crossover.selector_rows(3, episodes, None, config, 5)[:, 2:], states)


def test_the_episode_recorder_keeps_about_twice_the_selectors_states_of_a_round():
    config = RunConfig(population=2, total_steps=2 * 2048 * 20, rounds=2, batch_steps=2048, selector_states=1000)
    assert crossover.recorder_stride(config) == config.iterations_per_round * 2048 // 2000
    import dataclasses
    assert crossover.recorder_stride(dataclasses.replace(config, selector_states=0)) == 1  # every state
    assert crossover.recorder_stride(dataclasses.replace(config, selector_states=10 ** 9)) == 1
