"""MUTATE in one process: losses, the beta rule, importance weights, KL matrix, pooling."""
import dataclasses

import numpy as np
import pytest
import torch

from gpo_mpi import kernels
from gpo_mpi.config import RunConfig
from gpo_mpi.learner import Member, adam_state, gaussian_kl, load_adam_state
from gpo_mpi import mutations
from gpo_mpi.mutate import effective_sample_size, importance_ratios, pool_batches, standardize
from gpo_mpi.mutations.a2c import a2c_loss
from gpo_mpi.mutations.ppo import adapt_beta, ppo_loss
from gpo_mpi.networks import GaussianPolicy
from gpo_mpi.rollout import EnvSpec, ObsNormalizer, Sampler

CONFIG = RunConfig(population=1, total_steps=10_000, batch_steps=64)


def update(member, data, config, parallel=None) -> dict:
    """One iteration of the config's mutation algorithm; its statistics by name."""
    return mutations.algorithm(config).update(member, data, parallel)


def sampled_batch(policy, seed=0, steps=64, env_id="Pendulum-v1"):
    sampler = Sampler(EnvSpec(env_id, horizon=20), 1, seed, f"member {seed}")
    return sampler.sample(policy, ObsNormalizer(3, 10.0), steps)[0]


def test_ppo_and_a2c_losses_hand_computed():
    ratios = torch.tensor([1.0, 2.0])
    advantages = torch.tensor([1.0, -1.0])
    kl = torch.tensor([0.1, 0.3])
    # -(mean(1 * 1, 2 * -1)) + 2 * mean(0.1, 0.3) = 0.5 + 0.4
    assert ppo_loss(ratios, advantages, kl, beta=2.0).item() == pytest.approx(0.9)
    assert ppo_loss(ratios, advantages, kl[:0], beta=2.0).item() == pytest.approx(0.5)  # no own states
    assert a2c_loss(ratios, advantages).item() == pytest.approx(0.5)


def test_a2c_gradient_at_the_behaviour_policy_is_the_score_function_gradient():
    torch.manual_seed(0)
    policy = GaussianPolicy(3, 1)
    batch = sampled_batch(policy)
    obs, actions = torch.from_numpy(batch.obs), torch.from_numpy(batch.actions)
    advantages = torch.randn(len(obs))
    log_probs = policy.log_prob(obs, actions)
    a2c_gradient = torch.autograd.grad(a2c_loss(importance_ratios(log_probs, log_probs.detach()), advantages),
                                       policy.log_std)[0]
    score_gradient = torch.autograd.grad(-(policy.log_prob(obs, actions) * advantages).mean(), policy.log_std)[0]
    torch.testing.assert_close(a2c_gradient, score_gradient)


@pytest.mark.parametrize("kl, expected", [(0.02, 2.0), (0.0151, 2.0), (0.015, 1.0), (0.01, 1.0),
                                          (0.0067, 1.0), (0.0066, 0.5), (0.0, 0.5)])
def test_adaptive_beta_rule(kl, expected):
    assert adapt_beta(1.0, kl, kl_target=0.01) == expected


def test_importance_weights_are_one_for_the_behaviour_policy():
    torch.manual_seed(1)
    policy = GaussianPolicy(3, 1)
    batch = sampled_batch(policy)
    with torch.no_grad():
        ratios = importance_ratios(policy.log_prob(torch.from_numpy(batch.obs), torch.from_numpy(batch.actions)),
                                   torch.from_numpy(batch.log_probs))
    torch.testing.assert_close(ratios, torch.ones_like(ratios))
    other = GaussianPolicy(3, 1)
    with torch.no_grad():
        other_ratios = importance_ratios(other.log_prob(torch.from_numpy(batch.obs),
                                                        torch.from_numpy(batch.actions)),
                                         torch.from_numpy(batch.log_probs))
    assert not torch.allclose(other_ratios, torch.ones_like(other_ratios))


def test_torch_kl_matches_the_kernel():
    rng = np.random.default_rng(0)
    mean_p, mean_q = rng.normal(size=(2, 30, 4))
    log_std_p, log_std_q = rng.normal(size=(2, 4))
    torch_kl = gaussian_kl(*(torch.from_numpy(a) for a in (mean_p, log_std_p, mean_q, log_std_q)))
    np.testing.assert_allclose(torch_kl.numpy(), kernels.diag_gaussian_kl(mean_p, log_std_p, mean_q, log_std_q),
                               rtol=1e-12)


def test_effective_sample_size_hand_computed():
    assert effective_sample_size(np.ones(10)) == pytest.approx(10.0)
    assert effective_sample_size(np.array([1.0, 1.0, 0.0, 0.0])) == pytest.approx(2.0)
    # (1 + 1 + 2)^2 / (1 + 1 + 4) = 16 / 6
    assert effective_sample_size(np.array([1.0, 1.0, 2.0])) == pytest.approx(16 / 6)
    assert effective_sample_size(np.zeros(3)) == 0.0


def test_standardize_over_the_whole_batch():
    advantages = np.array([1.0, 2.0, 3.0, 6.0])
    expected = (advantages - 3.0) / np.sqrt(3.5)  # mean 3, population variance (4 + 1 + 0 + 9) / 4
    np.testing.assert_allclose(standardize(advantages), expected, rtol=1e-6)


def test_pooled_advantages_come_from_the_learners_critic_batch_by_batch():
    torch.manual_seed(2)
    config = dataclasses.replace(CONFIG, normalize_advantages=False)
    batches = [sampled_batch(GaussianPolicy(3, 1), seed=s) for s in (0, 1)]
    member = Member.create(1, 3, 1, config, seed=2)
    critic = member.critic
    pooled = pool_batches(member, batches, own_index=1, config=config)
    expected = []
    for batch in batches:
        with torch.no_grad():
            values = critic(torch.from_numpy(batch.obs)).numpy()
            next_values = critic(torch.from_numpy(batch.next_obs)).numpy()
        expected.append(kernels.gae(batch.rewards, values, next_values, batch.terminated, batch.truncated,
                                    config.gamma, config.gae_lambda))
        expected_returns = expected[-1] + values
    np.testing.assert_allclose(pooled.advantages.numpy(), np.concatenate(expected), rtol=1e-6)
    np.testing.assert_allclose(pooled.returns.numpy()[64:], expected_returns, rtol=1e-6)
    np.testing.assert_array_equal(pooled.own.numpy(), np.arange(128) >= 64)
    np.testing.assert_array_equal(pooled.behaviour_log_probs.numpy()[64:], batches[1].log_probs)


@pytest.mark.parametrize("cap", [1.0, 0.5, np.inf])
def test_foreign_samples_get_the_truncated_ratio_of_the_learner_to_their_behaviour_policy(cap):
    torch.manual_seed(6)
    config = dataclasses.replace(CONFIG, share_ratio_cap=cap)
    learner = Member.create(0, 3, 1, config, seed=6)
    with torch.no_grad():
        learner.policy.log_std.fill_(-0.3)
    foreign_policy = GaussianPolicy(3, 1, init_log_std=0.2)
    own_batch, foreign_batch = sampled_batch(learner.policy, seed=0), sampled_batch(foreign_policy, seed=1)
    pooled = pool_batches(learner, [foreign_batch, own_batch], own_index=1, config=config)
    with torch.no_grad():
        learner_log_probs = learner.policy.log_prob(torch.from_numpy(foreign_batch.obs),
                                                    torch.from_numpy(foreign_batch.actions)).numpy()
    untruncated = np.exp(learner_log_probs.astype(np.float64) - foreign_batch.log_probs)
    assert untruncated.min() < 0.5 < 1.0 < untruncated.max()  # the cases below are all exercised
    expected = np.minimum(cap, untruncated)
    np.testing.assert_allclose(pooled.weights.numpy()[:64], expected, rtol=1e-5)
    np.testing.assert_array_equal(pooled.weights.numpy()[64:], 1.0)
    # PPO's own ratio on foreign rows is taken against the learner's policy before the update
    np.testing.assert_allclose(pooled.behaviour_log_probs.numpy()[:64], learner_log_probs, rtol=1e-6)
    all_weights = np.concatenate([expected, np.ones(64)])
    assert pooled.effective_sample_size == pytest.approx(all_weights.sum() ** 2 / (all_weights ** 2).sum(),
                                                         rel=1e-5)


@pytest.mark.parametrize("critic_data", ["own", "shared"])
@pytest.mark.parametrize("minibatch, share_rows", [(0, 0), (32, 0), (0, 16), (32, 16)])
def test_the_critic_fits_its_own_batch_or_the_pooled_data(critic_data, minibatch, share_rows):
    """With critic_data "own", other members' rows cannot move the critic: changing their
    returns leaves the fitted critic as it was."""
    config = dataclasses.replace(CONFIG, critic_data=critic_data, policy_epochs=1, critic_epochs=3,
                                 minibatch=minibatch, share_rows=share_rows)
    batches = [sampled_batch(GaussianPolicy(3, 1), seed=s) for s in (0, 1)]
    fitted = []
    for shift in (0.0, 100.0):
        member = Member.create(0, 3, 1, config, seed=7)
        pooled = pool_batches(member, batches, own_index=0, config=config)
        pooled.returns[64:] += shift
        update(member, pooled, config)
        fitted.append(torch.cat([p.detach().flatten() for p in member.critic.parameters()]))
    if critic_data == "own":
        torch.testing.assert_close(fitted[0], fitted[1], rtol=0, atol=0)
    else:
        assert not torch.allclose(fitted[0], fitted[1])


@pytest.mark.parametrize("minibatch", [0, 40])
def test_share_rows_learns_from_the_own_rows_and_a_fresh_draw_of_foreign_ones_each_epoch(minibatch):
    config = dataclasses.replace(CONFIG, share_rows=24, policy_epochs=3, critic_epochs=3, minibatch=minibatch)
    batches = [sampled_batch(GaussianPolicy(3, 1), seed=s) for s in (0, 1, 2)]  # 64 own rows, 128 foreign
    member = Member.create(0, 3, 1, config, seed=7)
    pooled = pool_batches(member, batches, own_index=0, config=config)
    row_of = {row.tobytes(): index for index, row in enumerate(pooled.obs.numpy())}
    seen = []  # the rows of every forward pass of the policy, as indices into the pooled data
    member.policy.mean_net.register_forward_hook(
        lambda module, inputs, output: seen.append(sorted(row_of[row.tobytes()] for row in inputs[0].numpy())))
    update(member, pooled, config)
    assert seen[0] == list(range(192)) and seen[-1] == list(range(64))  # the old means; the KL on own rows
    passes_per_epoch = 1 if minibatch == 0 else 3  # 88 rows in minibatches of 40
    epochs = [sorted(sum(seen[1 + e * passes_per_epoch:1 + (e + 1) * passes_per_epoch], [])) for e in range(3)]
    assert len(seen) == 2 + 3 * passes_per_epoch
    foreign_draws = []
    for rows in epochs:
        assert len(rows) == 88 == len(set(rows)) and rows[:64] == list(range(64))
        foreign_draws.append(tuple(rows[64:]))
    assert len(set(foreign_draws)) == 3  # drawn afresh each epoch

    # a draw as large as the foreign rows is all of them: the update without share_rows, bit for bit
    parameters = []
    for share_rows in (0, 128):
        member = Member.create(0, 3, 1, config, seed=7)
        update(member, pool_batches(member, batches, 0, config), dataclasses.replace(config, share_rows=share_rows))
        parameters.append(torch.cat([p.detach().flatten() for p in member.policy.parameters()]))
    torch.testing.assert_close(parameters[0], parameters[1], rtol=0, atol=0)


@pytest.mark.parametrize("mutation", ["ppo", "a2c"])
def test_update_improves_the_surrogate_and_adapts_beta(mutation):
    config = dataclasses.replace(CONFIG, mutation=mutation, policy_lr=1e-3, minibatch=0)
    member = Member.create(0, 3, 1, config, seed=4)
    batch = sampled_batch(member.policy, steps=256)
    data = pool_batches(member, [batch], 0, config)

    def surrogate():
        with torch.no_grad():
            log_probs = member.policy.log_prob(data.obs, data.actions)
            return (importance_ratios(log_probs, data.behaviour_log_probs) * data.advantages).mean().item()

    before = surrogate()
    critic_error_before = ((member.critic(data.obs) - data.returns) ** 2).mean().item()
    stats = update(member, data, config)
    assert surrogate() > before
    assert ((member.critic(data.obs) - data.returns) ** 2).mean().item() < critic_error_before
    assert stats["policy_kl"] > 0
    if mutation == "ppo":
        assert stats["beta"] == adapt_beta(config.initial_beta, stats["policy_kl"], config.kl_target) == member.beta
    else:
        assert "beta" not in stats and member.beta == config.initial_beta  # A2C has no penalty to adapt


def test_a_non_finite_loss_stops_the_update_naming_member_and_environment():
    from gpo_mpi.rollout import NonFiniteError
    config = dataclasses.replace(CONFIG, env="Pendulum-v1")
    member = Member.create(3, 3, 1, config, seed=5)
    data = pool_batches(member, [sampled_batch(member.policy)], 0, config)
    data.advantages[5] = float("nan")
    before = [p.detach().clone() for p in member.policy.parameters()]
    with pytest.raises(NonFiniteError, match="member 3 on Pendulum-v1: the policy-gradient loss became non-finite"):
        update(member, data, config)
    for old, new in zip(before, member.policy.parameters()):  # no step was taken with it
        torch.testing.assert_close(old, new)


ADAM_AGAINST_TORCH = """
import sys
import torch
from gpo_mpi.learner import Adam

torch.manual_seed(0)
inputs = [torch.randn(8, 5) for _ in range(4)]
ours_net, torchs_net = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
torchs_net.load_state_dict(ours_net.state_dict())


def train(net, optimizer):
    for step, batch in enumerate(inputs):
        optimizer.zero_grad()
        (net(batch) ** 2).sum().backward()
        optimizer.step()
        if step == 1:  # through a checkpoint's round trip
            optimizer.load_state_dict(optimizer.state_dict())


ours = Adam(ours_net.parameters(), 0.01)
train(ours_net, ours)
print("compiler imported:", "torch._dynamo" in sys.modules)
torchs = torch.optim.Adam(torchs_net.parameters(), lr=0.01, fused=True)
train(torchs_net, torchs)
pairs = list(zip(ours_net.parameters(), torchs_net.parameters()))
print("same parameters:", all(torch.equal(p, q) for p, q in pairs))
print("same state:", all(torch.equal(ours.state[p][name], torchs.state[q][name])
                         for p, q in pairs for name in ("step", "exp_avg", "exp_avg_sq")))
"""


def test_gpo_mpis_adam_steps_like_torchs_fused_adam_without_importing_the_compiler():
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-c", ADAM_AGAINST_TORCH], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["compiler imported: False", "same parameters: True", "same state: True"]


def test_adam_state_moves_as_a_flat_vector():
    """A copy of a member's Adam state makes the next step of an equal network equal to the original's."""
    config = dataclasses.replace(CONFIG, policy_epochs=3, critic_epochs=3)
    member = Member.create(0, 3, 1, config, seed=8)
    assert adam_state(member.policy_optimizer)[0] == 0 and not adam_state(member.policy_optimizer).any()
    update(member, pool_batches(member, [sampled_batch(member.policy)], 0, config), config)
    vector = adam_state(member.policy_optimizer)
    parameter_count = sum(p.numel() for p in member.policy.parameters())
    assert vector.shape == (1 + 2 * parameter_count,) and vector[0] == 3
    copy = Member.create(1, 3, 1, config, seed=9)
    copy.policy.load_state_dict(member.policy.state_dict())
    load_adam_state(copy.policy_optimizer, vector)
    np.testing.assert_array_equal(adam_state(copy.policy_optimizer), vector)
    for network in (member, copy):
        network.policy_optimizer.zero_grad()
        network.policy.log_prob(torch.zeros(4, 3), torch.ones(4, 1)).sum().backward()
        network.policy_optimizer.step()
    for original, copied in zip(member.policy.parameters(), copy.policy.parameters()):
        torch.testing.assert_close(original, copied, rtol=0, atol=0)


def test_a_members_state_loads_into_a_fresh_member_and_it_goes_on_identically(tmp_path):
    from conftest import stored_and_read
    from gpo_mpi.config import ConfigError
    batch = sampled_batch(GaussianPolicy(3, 1), seed=3)
    trained = Member.create(2, 3, 1, CONFIG, seed=5)
    update(trained, pool_batches(trained, [batch], own_index=0, config=CONFIG), CONFIG)  # Adam state, beta moved
    restored = Member.create(2, 3, 1, CONFIG, seed=99)  # other initial weights and minibatch order
    restored.load_state(stored_and_read(trained.state(), tmp_path))  # as a checkpoint stores it
    for member in (trained, restored):
        update(member, pool_batches(member, [batch], own_index=0, config=CONFIG), CONFIG)
    for a, b in zip([*trained.policy.parameters(), *trained.critic.parameters()],
                    [*restored.policy.parameters(), *restored.critic.parameters()]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert restored.beta == trained.beta
    with pytest.raises(ConfigError, match="checkpoint holds member 2 where member 3 was expected"):
        Member.create(3, 3, 1, CONFIG, seed=5).load_state(trained.state())


def test_a_members_minibatch_generator_round_trips_and_decides_the_next_update(tmp_path):
    """At the defaults' full batch a member's generator still draws which foreign rows an epoch uses (share_rows
    below the foreign rows); restored from its stored state it draws the same rows, and a member restored with
    everything but its generator (a fresh one from another seed) updates differently."""
    from conftest import stored_and_read
    config = dataclasses.replace(CONFIG, share_rows=16, policy_epochs=3, critic_epochs=3)
    own_batch, foreign_batch = sampled_batch(GaussianPolicy(3, 1), seed=3), sampled_batch(GaussianPolicy(3, 1), seed=4)

    def next_update(member):
        update(member, pool_batches(member, [foreign_batch, own_batch], own_index=1, config=config), config)
        return torch.cat([p.detach().flatten() for p in [*member.policy.parameters(), *member.critic.parameters()]])

    trained = Member.create(2, 3, 1, config, seed=5)
    next_update(trained)  # the generator has drawn: its state is no longer the seed's
    stored = stored_and_read(trained.state(), tmp_path)
    restored, without_generator = Member.create(2, 3, 1, config, seed=99), Member.create(2, 3, 1, config, seed=99)
    restored.load_state(stored)
    without_generator.load_state(stored)
    without_generator.generator = torch.Generator().manual_seed(99)
    expected = next_update(trained)
    torch.testing.assert_close(next_update(restored), expected, rtol=0, atol=0)
    assert not torch.equal(next_update(without_generator), expected)


def test_the_truncated_weights_scale_each_foreign_rows_part_of_the_policy_gradient():
    """A foreign row of weight 0 drops out of the update exactly as a row of advantage 0 does, and the weights
    the cap gives change the update: the weights reach the loss, not only the effective sample size."""
    torch.manual_seed(6)
    config = dataclasses.replace(CONFIG, share_ratio_cap=1.0)
    learner = Member.create(0, 3, 1, config, seed=6)
    own_batch, foreign_batch = sampled_batch(learner.policy, seed=0), sampled_batch(GaussianPolicy(3, 1), seed=1)
    pooled = pool_batches(learner, [foreign_batch, own_batch], own_index=1, config=config)
    assert 0.0 < pooled.weights[~pooled.own].min() < 1.0  # truncation and weighting are both exercised
    weightless = dataclasses.replace(pooled, weights=torch.where(pooled.own, 1.0, 0.0))
    no_advantage = dataclasses.replace(pooled, advantages=torch.where(pooled.own, pooled.advantages, 0.0))
    trained = {}
    for name, data in (("weights", pooled), ("weightless", weightless), ("no advantage", no_advantage)):
        member = Member.create(0, 3, 1, config, seed=6)
        update(member, data, config)
        trained[name] = torch.cat([p.detach().reshape(-1) for p in member.policy.parameters()])
    torch.testing.assert_close(trained["weightless"], trained["no advantage"], rtol=0, atol=0)
    assert not torch.equal(trained["weights"], trained["weightless"])


def test_a_member_is_built_as_its_configuration_says():
    config = dataclasses.replace(CONFIG, policy_hidden=(5,), critic_hidden=(7, 3), init_log_std=-0.5)
    member = Member.create(0, 3, 2, config, seed=1)
    torch.testing.assert_close(member.policy.log_std.detach(), torch.full((2,), -0.5))
    assert [p.shape for p in member.critic.parameters()] == [(7, 3), (7,), (3, 7), (3,), (1, 3), (1,)]
    assert [tuple(p.shape) for p in member.policy.parameters() if p.dim() == 2] == [(5, 3), (2, 5)]


def test_minibatches_come_from_the_members_generator_and_a_whole_batch_keeps_its_order():
    from gpo_mpi.learner import minibatch_indices
    def orders(seed):
        generator = torch.Generator().manual_seed(seed)
        return [rows.tolist() for rows in minibatch_indices(10, 4, generator)], generator
    torch.manual_seed(0)
    first, _ = orders(3)
    torch.manual_seed(1)  # torch's global generator plays no part
    again, _ = orders(3)
    assert first == again and sorted(sum(first, [])) == list(range(10)) and [len(r) for r in first] == [4, 4, 2]
    assert orders(4)[0] != first
    for size in (0, 10, 12):  # one minibatch of everything: in order, and no draw from the generator
        generator = torch.Generator().manual_seed(3)
        state = generator.get_state()
        assert [rows.tolist() for rows in minibatch_indices(10, size, generator)] == [list(range(10))]
        assert torch.equal(generator.get_state(), state)


def test_adam_state_of_a_stepped_optimizer_loads_even_where_its_first_moment_is_zero():
    """The step count, not any moment, says whether the vector holds a state."""
    config = dataclasses.replace(CONFIG, policy_epochs=2)
    member = Member.create(0, 3, 1, config, seed=8)
    update(member, pool_batches(member, [sampled_batch(member.policy)], 0, config), config)
    vector = adam_state(member.policy_optimizer)
    vector[1] = 0.0  # the first parameter's first moment
    copy = Member.create(0, 3, 1, config, seed=9)
    load_adam_state(copy.policy_optimizer, vector)
    np.testing.assert_array_equal(adam_state(copy.policy_optimizer), vector)


class ThreadSums:
    """Sums over `n` threads standing in for ranks: DataParallel's two callbacks, as an Allreduce gives them."""

    def __init__(self, n: int):
        import threading
        self.barrier, self.slots = threading.Barrier(n, timeout=60), [None] * n

    def total(self, rank: int, values: np.ndarray) -> np.ndarray:
        self.slots[rank] = values
        self.barrier.wait()
        total = sum(self.slots[1:], self.slots[0].copy())  # the same order on every thread
        self.barrier.wait()
        return total

    def parallel(self, rank: int, first_row: int, total_rows: int):
        from gpo_mpi.mutate import DataParallel

        def sum_gradients(parameters):
            flat = torch.cat([p.grad.reshape(-1) for p in parameters]).numpy().astype(np.float64)
            summed = torch.from_numpy(self.total(rank, flat))
            for p, part in zip(parameters, torch.split(summed, [p.numel() for p in parameters])):
                p.grad.copy_(part.reshape(p.shape))
        return DataParallel(first_row, total_rows, lambda values: self.total(rank, values), sum_gradients)


def rows_of(data, rows):
    return dataclasses.replace(data, **{field.name: getattr(data, field.name)[rows]
                                        for field in dataclasses.fields(data)})


@pytest.mark.parametrize("mutation, minibatch", [("ppo", 0), ("ppo", 16), ("a2c", 0), ("ppo-clip", 16)])
def test_a_data_parallel_update_over_two_ranks_is_the_one_process_update(mutation, minibatch):
    """Joint's path: each of two ranks (threads here) holds half of one batch; with the sums over ranks the
    step is the one process's on the whole batch (to rounding: the sums add in another order)."""
    import threading
    # advantages not standardized: at the behaviour policy the loss is -mean(A), which standardizing makes 0,
    # and then each rank's part of it says nothing about what it was divided by
    config = dataclasses.replace(CONFIG, mutation=mutation, minibatch=minibatch, policy_epochs=3, critic_epochs=3,
                                 max_grad_norm=0.5, normalize_advantages=False)
    whole = Member.create(0, 3, 1, config, seed=4)
    data = pool_batches(whole, [sampled_batch(whole.policy, seed=2)], 0, config)
    halves = [Member.create(0, 3, 1, config, seed=4) for _ in range(2)]
    expected = update(whole, data, config)
    sums, results, errors = ThreadSums(2), [None, None], []

    def rank(index):
        try:
            rows = slice(32 * index, 32 * (index + 1))
            results[index] = update(halves[index], rows_of(data, rows), config, sums.parallel(index, 32 * index, 64))
        except Exception as error:  # noqa: BLE001 (reported below, after the other thread ends)
            errors.append(error)
            sums.barrier.abort()
    threads = [threading.Thread(target=rank, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for member, stats in zip(halves, results):
        for a, b in zip([*whole.policy.parameters(), *whole.critic.parameters()],
                        [*member.policy.parameters(), *member.critic.parameters()]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        # every statistic is the whole batch's (each rank's sums added over ranks), but the rows' ESS
        for name in set(expected) - {"effective_sample_size"}:
            assert stats[name] == pytest.approx(expected[name], rel=1e-4, abs=1e-6), name


def test_data_parallelism_refuses_other_members_rows():
    from gpo_mpi.mutate import DataParallel
    learner = Member.create(0, 3, 1, CONFIG, seed=6)
    pooled = pool_batches(learner, [sampled_batch(GaussianPolicy(3, 1), seed=1), sampled_batch(learner.policy)], 1,
                          CONFIG)
    parallel = DataParallel(0, len(pooled.obs), lambda values: values, lambda parameters: None)
    with pytest.raises(ValueError, match=r"^data parallelism \(Joint\) never pools other members' batches$"):
        update(learner, pooled, CONFIG, parallel)


def test_losses_of_one_row_and_of_rows_counted_on_other_ranks():
    one = torch.tensor
    # one row: -(2 * 3) + 2 * 0.5
    assert ppo_loss(one([2.0]), one([3.0]), one([0.5]), beta=2.0).item() == pytest.approx(-5.0)
    assert a2c_loss(one([2.0]), one([3.0])).item() == pytest.approx(-6.0)
    # the means divide by the rows of every rank: -(1 + 2) / 4 + 2 * (0.25 + 0.75) / 5
    assert ppo_loss(one([1.0, 2.0]), one([1.0, 1.0]), one([0.25, 0.75]), 2.0, n_rows=4,
                    n_own_rows=5).item() == pytest.approx(-0.75 + 0.4)
    assert a2c_loss(one([1.0, 2.0]), one([1.0, 1.0]), n_rows=3).item() == pytest.approx(-1.0)


def test_beta_stays_at_the_edges_of_the_target_band():
    assert adapt_beta(1.0, 0.01 / 1.5, 0.01) == 1.0 and adapt_beta(1.0, 0.01 * 1.5, 0.01) == 1.0


def test_an_update_reports_the_losses_of_the_networks_it_started_from():
    """One epoch each at full batch: the losses are those of the initial networks on the whole batch."""
    config = dataclasses.replace(CONFIG, policy_epochs=1, critic_epochs=1)
    member = Member.create(0, 3, 1, config, seed=2)
    data = pool_batches(member, [sampled_batch(member.policy, seed=5)], 0, config)
    with torch.no_grad():
        critic_loss = float(((member.critic(data.obs) - data.returns) ** 2).mean())
    stats = update(member, data, config)
    assert stats["value_loss"] == pytest.approx(critic_loss, rel=1e-5)
    assert stats["policy_loss"] == pytest.approx(-float(data.advantages.mean()), abs=1e-6)  # ratios 1, KL 0


def test_gradients_are_clipped_to_max_grad_norm_and_not_at_all_at_zero():
    from gpo_mpi.mutate import _step
    for max_grad_norm, expected in ((0.5, 0.5), (0.0, None)):
        network = torch.nn.Linear(3, 1)
        optimizer = torch.optim.SGD(network.parameters(), lr=0.0)
        loss = (100.0 * network(torch.ones(4, 3))).sum()
        _step([optimizer], [list(network.parameters())], loss, max_grad_norm, None)
        norm = float(torch.cat([p.grad.reshape(-1) for p in network.parameters()]).norm())
        assert norm == pytest.approx(expected if expected else 400.0 * 2.0, rel=1e-5)  # |grad| = 400 x |(1,1,1,1)|


def test_an_a2c_update_takes_one_full_batch_policy_step():
    """A2C: one step of Adam on -mean(ratio * A) over the whole batch, however many policy epochs are set; the
    critic takes its epochs."""
    config = dataclasses.replace(CONFIG, mutation="a2c", policy_epochs=10, critic_epochs=3)
    member, by_hand = Member.create(0, 3, 1, config, seed=3), Member.create(0, 3, 1, config, seed=3)
    data = pool_batches(member, [sampled_batch(member.policy, seed=4)], 0, config)
    update(member, data, config)
    assert adam_state(member.policy_optimizer)[0] == 1 and adam_state(member.critic_optimizer)[0] == 3
    mean, log_std = by_hand.policy(data.obs)
    from gpo_mpi.networks import gaussian_log_prob
    ratios = importance_ratios(gaussian_log_prob(mean, log_std, data.actions), data.behaviour_log_probs)
    by_hand.policy_optimizer.zero_grad()
    a2c_loss(ratios, data.advantages).backward()
    torch.nn.utils.clip_grad_norm_(list(by_hand.policy.parameters()), config.max_grad_norm)
    by_hand.policy_optimizer.step()
    for a, b in zip(member.policy.parameters(), by_hand.policy.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def update_by_hand(member, data, config):
    """PPO as the textbook writes it: each epoch, minibatches of the rows in the member's random order; the
    policy's loss -mean(w * ratio * A) + beta * mean KL over the minibatch's own rows (ppo-clip:
    -mean(w * min(ratio * A, clip(ratio) * A))); the critic's mean squared error over its rows (own only with
    critic_data "own"); one Adam step per minibatch for each network still within its epochs, each gradient
    clipped on its own (max_grad_norm 0: not at all). Returns the mean KL from the old to the new policy on the
    own rows, and the means over steps of the losses and the clip fraction."""
    from gpo_mpi.learner import minibatch_indices
    from gpo_mpi.networks import gaussian_log_prob
    with torch.no_grad():
        old_mean, old_log_std = member.policy(data.obs)
        old_log_std = old_log_std.clone()
    policy_losses, critic_losses, clip_fractions = [], [], []
    for epoch in range(max(config.policy_epochs, config.critic_epochs)):
        for rows in minibatch_indices(len(data.obs), config.minibatch, member.generator):
            optimizers, loss = [], torch.zeros(())
            if epoch < config.policy_epochs:
                mean, log_std = member.policy(data.obs[rows])
                log_probs = gaussian_log_prob(mean, log_std, data.actions[rows])
                ratios = torch.exp(log_probs - data.behaviour_log_probs[rows])
                advantages = data.advantages[rows]
                if config.mutation == "ppo-clip":
                    clipped = torch.clamp(ratios, 1 - config.clip_range, 1 + config.clip_range)
                    policy_loss = -(data.weights[rows] * torch.min(ratios * advantages, clipped * advantages)).mean()
                    clip_fractions.append(float(((ratios - 1).abs() > config.clip_range).float().mean()))
                else:
                    own = data.own[rows]
                    kl = gaussian_kl(old_mean[rows][own], old_log_std, mean[own], log_std)
                    policy_loss = -(data.weights[rows] * ratios * advantages).mean()
                    if own.any():
                        policy_loss = policy_loss + member.beta * kl.mean()
                policy_losses.append(float(policy_loss.detach()))
                loss = loss + policy_loss
                optimizers.append((member.policy_optimizer, member.policy))
            if epoch < config.critic_epochs:
                critic_rows = rows[data.own[rows]] if config.critic_data == "own" else rows
                # a minibatch without own rows still takes the critic's Adam step, on a zero gradient
                errors = (member.critic(data.obs[critic_rows]) - data.returns[critic_rows]) ** 2
                critic_loss = errors.mean() if len(critic_rows) else errors.sum()
                critic_losses.append(float(critic_loss.detach()))
                loss = loss + critic_loss
                optimizers.append((member.critic_optimizer, member.critic))
            for optimizer, _ in optimizers:
                optimizer.zero_grad()
            loss.backward()
            for optimizer, network in optimizers:
                if config.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(list(network.parameters()), config.max_grad_norm)
                optimizer.step()
    with torch.no_grad():
        mean, log_std = member.policy(data.obs[data.own])
        kl = float(gaussian_kl(old_mean[data.own], old_log_std, mean, log_std).mean())
    return dict(policy_kl=kl, policy_loss=np.mean(policy_losses), value_loss=np.mean(critic_losses),
                clip_fraction=np.mean(clip_fractions) if clip_fractions else None)


def assert_same_networks(member, other):
    for a, b in zip([*member.policy.parameters(), *member.critic.parameters()],
                    [*other.policy.parameters(), *other.critic.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert adam_state(member.policy_optimizer)[0] == adam_state(other.policy_optimizer)[0]
    assert adam_state(member.critic_optimizer)[0] == adam_state(other.critic_optimizer)[0]


@pytest.mark.parametrize("minibatch, policy_epochs, critic_epochs, critic_data, max_grad_norm, own_steps",
                         [(32, 2, 3, "own", 0.5, 65), (32, 3, 2, "shared", 0.0, 65), (0, 3, 2, "own", 0.5, 1)])
def test_a_ppo_update_is_the_textbook_loop_over_minibatches_and_epochs(minibatch, policy_epochs, critic_epochs,
                                                                      critic_data, max_grad_norm, own_steps):
    """Own rows and another member's 64 (65 + 64: the last minibatch of 32 holds one row; or a single own row),
    policy and critic trained for different numbers of epochs, clipped or not: the update's networks, its
    reported KL and beta are the textbook loop's."""
    config = dataclasses.replace(CONFIG, minibatch=minibatch, policy_epochs=policy_epochs,
                                 critic_epochs=critic_epochs, critic_data=critic_data, max_grad_norm=max_grad_norm,
                                 policy_lr=3e-3)
    member, by_hand = Member.create(0, 3, 1, config, seed=5), Member.create(0, 3, 1, config, seed=5)
    batches = [sampled_batch(member.policy, seed=1, steps=own_steps),
               sampled_batch(GaussianPolicy(3, 1), seed=2, steps=64)]
    data = pool_batches(member, batches, 0, config)
    assert 0 < float(data.weights[own_steps:].min()) < 1  # truncated weights, not all 1
    stats = update(member, data, config)
    expected = update_by_hand(by_hand, data, config)
    assert_same_networks(member, by_hand)
    kl = expected["policy_kl"]
    assert kl > 0 and stats["policy_kl"] == pytest.approx(kl, rel=1e-4)
    for name in ("policy_loss", "value_loss"):  # means over the update's steps
        assert stats[name] == pytest.approx(expected[name], rel=1e-4, abs=1e-6), name
    assert stats["beta"] == member.beta == adapt_beta(config.initial_beta, kl, config.kl_target)
    assert stats["effective_sample_size"] == pytest.approx(effective_sample_size(data.weights.numpy()))


def test_share_rows_of_one_draws_one_foreign_row_each_epoch():
    config = dataclasses.replace(CONFIG, share_rows=1, policy_epochs=2, critic_epochs=2)
    member = Member.create(0, 3, 1, config, seed=7)
    data = pool_batches(member, [sampled_batch(member.policy), sampled_batch(GaussianPolicy(3, 1), seed=1)], 0,
                        config)
    policy_sizes = []
    member.policy.mean_net.register_forward_hook(lambda module, inputs, output: policy_sizes.append(len(inputs[0])))
    update(member, data, config)
    assert policy_sizes == [128, 65, 65, 64]  # old means; each epoch 64 own rows and one drawn; the KL


def test_the_effective_sample_size_of_tiny_weights_is_still_their_count():
    """Weights of 1e-30 (a learner far from the behaviour policy): their squares underflow in float32."""
    assert effective_sample_size(np.full(4, 1e-30, dtype=np.float32)) == pytest.approx(4.0)
    assert effective_sample_size(np.array([0.5, 0.5])) == pytest.approx(2.0)  # squares summing below 1


def test_pooled_data_is_float32_like_the_networks():
    member = Member.create(0, 3, 1, CONFIG, seed=1)
    data = pool_batches(member, [sampled_batch(member.policy), sampled_batch(GaussianPolicy(3, 1), seed=1)], 0,
                        CONFIG)
    for name in ("obs", "actions", "behaviour_log_probs", "weights", "advantages", "returns"):
        assert getattr(data, name).dtype == torch.float32, name


def test_standardize_at_its_edges():
    np.testing.assert_allclose(standardize(np.array([1.0, 3.0])), [-1.0, 1.0], rtol=1e-6)  # two rows
    np.testing.assert_array_equal(standardize(np.array([5.0])), [5.0])  # one row: nothing to scale by
    small = np.array([0.0, 0.2])  # std 0.1: scaled up, no floor on the std
    np.testing.assert_allclose(standardize(small), [-1.0, 1.0], rtol=1e-6)
    # float32 advantages far from zero (a fresh critic's): summed in float32, their variance came out negative
    offset = (1e4 + np.random.default_rng(0).standard_normal(10_000)).astype(np.float32)
    assert standardize(offset).std() == pytest.approx(1.0, rel=1e-3)


def test_joint_standardizes_the_advantages_over_every_ranks_rows():
    """Two ranks (threads) pooling their own halves of a batch: the advantages are standardized with the mean
    and std of both halves together, not each half's own."""
    import threading
    member = Member.create(0, 3, 1, CONFIG, seed=3)
    halves = [sampled_batch(member.policy, seed=4, steps=32), sampled_batch(member.policy, seed=5, steps=48)]
    raw = torch.cat([pool_batches(member, [half], None, dataclasses.replace(CONFIG, normalize_advantages=False))
                     .advantages for half in halves]).numpy()
    sums, pooled = ThreadSums(2), [None, None]

    def rank(index):
        pooled[index] = pool_batches(member, [halves[index]], None, CONFIG,
                                     sums.parallel(index, 32 * index, 80))
    threads = [threading.Thread(target=rank, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    np.testing.assert_allclose(torch.cat([pooled[0].advantages, pooled[1].advantages]).numpy(), standardize(raw),
                               rtol=1e-5, atol=1e-6)


def test_the_clipped_loss_hand_computed():
    from gpo_mpi.mutations.ppo_clip import clipped_loss
    ratios, advantages = torch.tensor([0.5, 1.0, 1.5, 0.5]), torch.tensor([1.0, -1.0, 1.0, -1.0])
    # min(0.5, 0.8) + min(-1, -1) + min(1.5, 1.2) + min(-0.5, -0.8) = 0.5 - 1 + 1.2 - 0.8 = -0.1, over 4 rows
    assert clipped_loss(ratios, advantages, 0.2, 4).item() == pytest.approx(0.1 / 4)
    # fixed weights multiply each clipped term; the mean divides by n_rows (every rank's, under Joint)
    weights = torch.tensor([1.0, 0.5, 2.0, 1.0])
    assert clipped_loss(ratios, advantages, 0.2, 8, weights).item() == pytest.approx(-(0.5 - 0.5 + 2.4 - 0.8) / 8)
    # no gradient where the ratio left the range in the advantage's direction, the plain one inside it
    ratios = torch.tensor([1.5, 1.1, 0.5], requires_grad=True)
    clipped_loss(ratios, torch.tensor([1.0, 1.0, 1.0]), 0.2, 3).backward()
    torch.testing.assert_close(ratios.grad, torch.tensor([0.0, -1 / 3, -1 / 3]))


@pytest.mark.parametrize("minibatch, policy_epochs, critic_epochs, own_steps", [(32, 3, 2, 65), (0, 2, 3, 64)])
def test_a_ppo_clip_update_is_the_textbook_clipped_loop(minibatch, policy_epochs, critic_epochs, own_steps):
    """Own rows and another member's under their truncated weights, at a learning rate that takes ratios out
    of the clip range: the networks, losses and clip fraction are the textbook loop's."""
    config = dataclasses.replace(CONFIG, mutation="ppo-clip", minibatch=minibatch, policy_epochs=policy_epochs,
                                 critic_epochs=critic_epochs, policy_lr=3e-2, clip_range=0.1)
    member, by_hand = Member.create(0, 3, 1, config, seed=5), Member.create(0, 3, 1, config, seed=5)
    batches = [sampled_batch(member.policy, seed=1, steps=own_steps),
               sampled_batch(GaussianPolicy(3, 1), seed=2, steps=64)]
    data = pool_batches(member, batches, 0, config)
    stats = update(member, data, config)
    expected = update_by_hand(by_hand, data, config)
    assert_same_networks(member, by_hand)
    assert 0 < expected["clip_fraction"] < 1  # some ratios clipped, not all
    for name in ("policy_kl", "policy_loss", "value_loss", "clip_fraction"):
        assert stats[name] == pytest.approx(expected[name], rel=1e-4, abs=1e-6), name
    assert "beta" not in stats and member.beta == config.initial_beta


@pytest.mark.parametrize("mutation", ["ppo", "ppo-clip", "a2c"])
def test_the_diagnostics_of_an_update_by_hand(mutation):
    """Entropy, SB3's approximate KL and the critic's explained variance, on the own rows only."""
    config = dataclasses.replace(CONFIG, mutation=mutation, normalize_advantages=True)
    member = Member.create(0, 3, 1, config, seed=3)
    data = pool_batches(member, [sampled_batch(member.policy, seed=1), sampled_batch(GaussianPolicy(3, 1), seed=2)],
                        0, config)
    own = data.own
    with torch.no_grad():
        old_log_probs = member.policy.log_prob(data.obs[own], data.actions[own])
        values = member.critic(data.obs[own])
    stats = update(member, data, config)
    returns = data.returns[own].double().numpy()
    with torch.no_grad():
        log_ratios = (member.policy.log_prob(data.obs[own], data.actions[own]) - old_log_probs).double()
        mean, log_std = member.policy(data.obs[own])
        entropy = torch.distributions.Normal(mean, log_std.exp()).entropy().sum(-1).mean()
    assert stats["approx_kl"] == pytest.approx(float(((log_ratios.exp() - 1) - log_ratios).mean()), rel=1e-3)
    assert stats["approx_kl"] > 0
    assert stats["entropy"] == pytest.approx(float(entropy), rel=1e-5)
    expected_variance = 1 - np.var(returns - values.double().numpy()) / np.var(returns)
    assert stats["explained_variance"] == pytest.approx(expected_variance, rel=1e-4, abs=1e-6)
    assert set(stats) == set(mutations.algorithm(config).statistic_names)


@pytest.mark.parametrize("mutation", ["ppo", "ppo-clip"])
def test_the_kl_of_an_update_sees_the_change_of_the_standard_deviation(mutation):
    """The old policy is the one before the update, its log-std included: the policy's log-std is a parameter
    that the update's steps change in place, so a reference to it kept as "old" would follow the new one and
    the penalty and the reported KL would see only the means move (as they did until this test)."""
    import copy
    config = dataclasses.replace(CONFIG, mutation=mutation, policy_lr=3e-2, policy_epochs=5)
    member = Member.create(0, 3, 1, config, seed=8)
    before = copy.deepcopy(member.policy)
    data = pool_batches(member, [sampled_batch(member.policy, seed=3)], 0, config)
    stats = update(member, data, config)
    assert float((before.log_std - member.policy.log_std).detach().abs().max()) > 0.01
    with torch.no_grad():
        old_mean, old_log_std = before(data.obs)
        new_mean, new_log_std = member.policy(data.obs)
        kl = float(gaussian_kl(old_mean, old_log_std, new_mean, new_log_std).mean())
        means_only = float(gaussian_kl(old_mean, new_log_std, new_mean, new_log_std).mean())
    assert stats["policy_kl"] == pytest.approx(kl, rel=1e-5)
    assert abs(kl - means_only) > 1e-3 * kl  # a part of it the comparison above can see
