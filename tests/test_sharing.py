"""Data sharing's measurements in one process: the KL matrix and the share sets it decides."""
import numpy as np
import pytest
import torch

from gpo_mpi.sharing import kl_matrix, kl_rows, share_sets


def test_kl_matrix_zero_diagonal_and_closed_form():
    rng = np.random.default_rng(3)
    means = rng.normal(size=(3, 50, 2))
    log_stds = 0.3 * rng.normal(size=(3, 2))
    matrix = kl_matrix(means, log_stds)
    np.testing.assert_array_equal(np.diag(matrix), 0.0)
    for i in range(3):
        for j in range(3):
            p = torch.distributions.Normal(torch.from_numpy(means[i]), torch.from_numpy(np.exp(log_stds[i])))
            q = torch.distributions.Normal(torch.from_numpy(means[j]), torch.from_numpy(np.exp(log_stds[j])))
            expected = torch.distributions.kl_divergence(p, q).sum(-1).mean().item()
            assert matrix[i, j] == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert matrix[0, 1] != pytest.approx(matrix[1, 0])  # KL is not symmetric
    # a rank's own rows are the matrix's rows, bit for bit
    np.testing.assert_array_equal(kl_rows(means, log_stds, [2, 0]), matrix[[2, 0]])


def test_share_sets():
    kl = np.array([[0.0, 0.05, 0.5], [0.2, 0.0, 0.01], [0.3, 0.02, 0.0]])
    assert [list(s) for s in share_sets(kl, 0.1)] == [[0, 1], [1, 2], [1, 2]]
    assert [list(s) for s in share_sets(kl, np.inf)] == [[0, 1, 2]] * 3
    assert [list(s) for s in share_sets(kl, 0.0)] == [[0], [1], [2]]


def test_share_sets_keep_the_nearest_members():
    kl = np.array([[0.0, 0.4, 0.1, 0.3],
                   [0.2, 0.0, 0.2, 0.9],
                   [0.5, 0.6, 0.0, 0.7],
                   [0.1, 0.1, 0.1, 0.0]])
    # one other member: the nearest by KL; ties go to the lower index
    assert [list(s) for s in share_sets(kl, np.inf, max_others=1)] == [[0, 2], [0, 1], [0, 2], [0, 3]]
    assert [list(s) for s in share_sets(kl, np.inf, max_others=2)] == [[0, 2, 3], [0, 1, 2], [0, 1, 2], [0, 1, 3]]
    # epsilon first, then the limit: member 2 has no one below 0.45
    assert [list(s) for s in share_sets(kl, 0.45, max_others=2)] == [[0, 2, 3], [0, 1, 2], [2], [0, 1, 3]]


def test_share_set_ties_go_to_the_lower_index_in_a_large_population():
    """32 members, the KLs in three tied values (numpy's default sort is not stable beyond 16 elements)."""
    kl = np.random.default_rng(0).integers(1, 4, size=(32, 32)).astype(float)
    np.fill_diagonal(kl, 0.0)
    for i, chosen in enumerate(share_sets(kl, 10.0, max_others=12)):
        others = np.array([j for j in range(32) if j != i])
        nearest = others[np.argsort(kl[i, others], kind="stable")[:12]]
        np.testing.assert_array_equal(chosen, np.sort(np.append(nearest, i)))


def test_the_kl_states_policy_rows_and_each_ranks_kl_rows_are_the_matrix_of_the_policies():
    """A member's states for the pool: kl_states_per_member distinct rows of its batch (all of a smaller one),
    the same for the same seed, member and iteration; policy rows carry each policy's mean actions and log-std;
    any ranks' rows put together are the KL matrix of those policies."""
    from gpo_mpi.config import RunConfig
    from gpo_mpi.networks import GaussianPolicy
    from gpo_mpi.rollout import Batch
    from gpo_mpi.sharing import kl_rows_of, kl_states, policy_rows
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(50, 3)).astype(np.float32)
    batch = Batch(obs=obs, actions=np.zeros((50, 2), np.float32), log_probs=np.zeros(50, np.float32),
                  rewards=np.zeros(50, np.float32), next_obs=obs, terminated=np.zeros(50, bool),
                  truncated=np.zeros(50, bool))
    config = RunConfig(kl_states=20, kl_states_total=0, seed=3)
    states = kl_states(config, 1, 7, batch)
    rows_of_batch = [int(np.flatnonzero((obs == state).all(axis=1))[0]) for state in states]
    assert len(states) == 20 == len(set(rows_of_batch))
    np.testing.assert_array_equal(kl_states(config, 1, 7, batch), states)
    assert not np.array_equal(kl_states(config, 1, 8, batch), states)
    assert not np.array_equal(kl_states(config, 2, 7, batch), states)
    assert len(kl_states(RunConfig(kl_states=80, kl_states_total=0), 1, 7, batch)) == 50
    torch.manual_seed(1)
    policies = [GaussianPolicy(3, 2, init_log_std=s) for s in (-0.5, 0.0, 0.4)]
    rows = policy_rows(policies, states)
    with torch.no_grad():
        means = np.stack([policy(torch.from_numpy(states))[0].numpy() for policy in policies])
    np.testing.assert_array_equal(rows[:, :40].reshape(3, 20, 2), means)
    np.testing.assert_array_equal(rows[:, 40:], np.float32([[-0.5, -0.5], [0.0, 0.0], [0.4, 0.4]]))
    matrix = kl_matrix(means, rows[:, 40:])
    np.testing.assert_array_equal(np.concatenate([kl_rows_of(rows, 20, 2, [0, 1]), kl_rows_of(rows, 20, 2, [2])]),
                                  matrix)
