"""GAE and diagonal-Gaussian KL: both backends against the references."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from gpo_mpi import kernels
from gpo_mpi.kernels import reference

BACKENDS = ["cpp", "numpy"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Run the test once through the C++ extension and once through numpy."""
    if request.param == "numpy":
        monkeypatch.setattr(kernels, "_cpp", None)
    elif kernels._cpp is None:
        pytest.fail("the C++ extension is not built (pip install -e .)")
    return request.param


def random_batch(rng, length, dtype=np.float64, end_rate=0.02):
    rewards, values, next_values = ((rng.normal(size=length) * rng.uniform(0.1, 10)).astype(dtype) for _ in range(3))
    terminated = rng.random(length) < end_rate
    truncated = (rng.random(length) < end_rate) & ~terminated
    return rewards, values, next_values, terminated, truncated


def test_extension_is_built_unless_numpy_is_asked_for():
    if os.environ.get("GPO_MPI_KERNELS", "auto") == "numpy":
        assert kernels.BACKEND == "numpy"
    else:
        assert kernels.BACKEND == "cpp"


# --------------------------------------------------------------------- GAE

def test_gae_hand_computed():
    rewards = np.array([1.0, 2.0, 3.0])
    values = np.array([0.5, 1.0, 1.5])
    next_values = np.array([1.0, 1.5, 2.0])
    no_end = np.zeros(3, dtype=bool)
    at_1 = np.array([False, True, False])
    gamma, lam = 0.9, 0.8
    # deltas without a termination: 1.4, 2.35, 3.3; gamma * lam = 0.72
    expected = {
        "no episode end": (no_end, no_end, [4.80272, 4.726, 3.3]),
        # terminated at step 1: no bootstrap there (delta 1.0), no flow from step 2
        "terminated": (at_1, no_end, [2.12, 1.0, 3.3]),
        # truncated at step 1: bootstrap kept (delta 2.35), no flow from step 2
        "truncated": (no_end, at_1, [3.092, 2.35, 3.3]),
    }
    for name, (terminated, truncated, advantages) in expected.items():
        for function in (kernels.gae, reference.gae_loop, reference.gae_numpy):
            result = function(rewards, values, next_values, terminated, truncated, gamma, lam)
            np.testing.assert_allclose(result, advantages, rtol=1e-12, err_msg=f"{name}: {function}")


@pytest.mark.parametrize("length", [0, 1, 2, 7, 300, 5000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gae_matches_recursion_on_random_batches(backend, length, dtype):
    rng = np.random.default_rng(length)
    for gamma, lam in [(0.99, 0.95), (1.0, 1.0), (0.5, 0.3), (0.99, 0.0), (0.0, 0.9)]:
        batch = random_batch(rng, length, dtype, end_rate=rng.choice([0.0, 0.003, 0.05, 0.5]))
        advantages = kernels.gae(*batch, gamma, lam)
        expected = reference.gae_loop(*batch, gamma, lam)
        assert advantages.dtype == dtype and advantages.shape == (length,)
        scale = 1.0 + np.abs(expected).max(initial=0.0)
        tolerance = 1e-5 * scale if dtype == np.float32 else 1e-11 * scale
        np.testing.assert_allclose(advantages, expected, rtol=0, atol=tolerance)


def test_gae_vectorized_numpy_crosses_blocks_exactly():
    """Episodes much longer than the vectorized version's blocks, and decays small
    enough to shrink the blocks to a few steps."""
    rng = np.random.default_rng(1)
    for gamma, lam, end_rate in [(0.999, 0.999, 0.0), (0.99, 0.95, 1e-4), (0.3, 0.2, 0.01), (1e-4, 0.5, 0.01)]:
        batch = random_batch(rng, 20_000, end_rate=end_rate)
        np.testing.assert_allclose(reference.gae_numpy(*batch, gamma, lam),
                                   reference.gae_loop(*batch, gamma, lam), rtol=1e-9, atol=1e-9)


def test_gae_with_lambda_one_gives_monte_carlo_returns(backend):
    """lam = 1, episodes ending in termination: advantages + values are the
    discounted sums of rewards to the episode end."""
    rng = np.random.default_rng(2)
    episode_lengths = [5, 1, 12, 30]
    rewards = rng.normal(size=sum(episode_lengths))
    values = rng.normal(size=len(rewards))
    next_values = rng.normal(size=len(rewards))  # unused after terminations
    next_values[:-1] = values[1:]
    terminated = np.zeros(len(rewards), dtype=bool)
    terminated[np.cumsum(episode_lengths) - 1] = True
    gamma = 0.97
    returns = np.zeros(len(rewards))
    start = 0
    for length in episode_lengths:
        for t in range(start, start + length):
            returns[t] = sum(gamma ** (k - t) * rewards[k] for k in range(t, start + length))
        start += length
    advantages = kernels.gae(rewards, values, next_values, terminated, np.zeros_like(terminated), gamma, 1.0)
    np.testing.assert_allclose(advantages + values, returns, rtol=1e-10, atol=1e-10)


def test_gae_length_one_and_empty(backend):
    one = kernels.gae([2.0], [0.5], [3.0], [False], [True], 0.9, 0.95)
    np.testing.assert_allclose(one, [2.0 + 0.9 * 3.0 - 0.5])
    terminal = kernels.gae([2.0], [0.5], [3.0], [True], [False], 0.9, 0.95)
    np.testing.assert_allclose(terminal, [1.5])
    empty = kernels.gae(np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32),
                        np.zeros(0, bool), np.zeros(0, bool), 0.99, 0.95)
    assert empty.shape == (0,) and empty.dtype == np.float32


def test_gae_dtype_promotion(backend):
    rng = np.random.default_rng(3)
    rewards, values, next_values, terminated, truncated = random_batch(rng, 50, np.float32)
    assert kernels.gae(rewards, values, next_values, terminated, truncated, 0.99, 0.95).dtype == np.float32
    mixed = kernels.gae(rewards, values.astype(np.float64), next_values, terminated, truncated, 0.99, 0.95)
    assert mixed.dtype == np.float64
    integer_rewards = np.arange(50)
    result = kernels.gae(integer_rewards, values, next_values, terminated.astype(np.int8),
                         truncated.astype(np.float32), 0.99, 0.95)
    assert result.dtype == np.float64
    np.testing.assert_allclose(result, reference.gae_loop(integer_rewards, values, next_values,
                                                          terminated, truncated, 0.99, 0.95), rtol=1e-6)


def test_gae_non_contiguous_inputs(backend):
    rng = np.random.default_rng(4)
    wide = [np.stack([a, a]).T for a in random_batch(rng, 400)]  # every column a strided view
    strided = [a[::2, 0] for a in wide]
    assert not strided[0].flags.c_contiguous
    contiguous = [np.ascontiguousarray(a) for a in strided]
    np.testing.assert_array_equal(kernels.gae(*strided, 0.99, 0.95), kernels.gae(*contiguous, 0.99, 0.95))


@pytest.mark.parametrize("arguments, message", [
    (dict(values=np.zeros(4)), "gae: values has shape (4,), expected (5,)"),
    (dict(truncated=np.zeros(6, bool)), "gae: truncated has shape (6,), expected (5,)"),
    (dict(rewards=np.zeros((5, 1))), "gae: rewards has shape (5, 1), expected (T,)"),
    (dict(next_values=np.zeros((5, 2))), "gae: next_values has shape (5, 2), expected (5,)"),
    (dict(terminated=np.array(list("abcde"))), "gae: terminated must hold real numbers"),
    (dict(gamma=1.5), "gae: gamma must lie in [0, 1], got 1.5"),
    (dict(lam=-0.1), "gae: lam must lie in [0, 1], got -0.1"),
    (dict(lam=float("nan")), "gae: lam must lie in [0, 1], got nan"),
])
def test_gae_rejects_bad_arguments(backend, arguments, message):
    call = dict(rewards=np.zeros(5), values=np.zeros(5), next_values=np.zeros(5),
                terminated=np.zeros(5, bool), truncated=np.zeros(5, bool), gamma=0.99, lam=0.95)
    call.update(arguments)
    with pytest.raises(ValueError) as error:
        kernels.gae(**call)
    assert str(error.value).startswith(message)


# ---------------------------------------------------------------------- KL

def torch_kl(mean_p, log_std_p, mean_q, log_std_q):
    """An independent reference: torch.distributions' KL of Normals, summed over dims."""
    tensors = [torch.tensor(np.broadcast_to(a, np.shape(mean_p)), dtype=torch.float64)
               for a in (mean_p, log_std_p, mean_q, log_std_q)]
    p = torch.distributions.Normal(tensors[0], tensors[1].exp())
    q = torch.distributions.Normal(tensors[2], tensors[3].exp())
    return torch.distributions.kl_divergence(p, q).sum(-1).numpy()


def test_kl_hand_computed(backend):
    # p = N(0, 1), q = N(1, 2^2): log 2 + (1 + 1) / (2 * 4) - 1/2
    kl = kernels.diag_gaussian_kl([[0.0]], [0.0], [[1.0]], [np.log(2.0)])
    np.testing.assert_allclose(kl, [np.log(2.0) + 0.25 - 0.5], rtol=1e-12)
    # dimensions add up
    kl2 = kernels.diag_gaussian_kl([[0.0, 0.0]], [0.0, 0.0], [[1.0, 1.0]], [np.log(2.0)] * 2)
    np.testing.assert_allclose(kl2, 2 * kl, rtol=1e-12)


@pytest.mark.parametrize("rows", [0, 1, 9, 1000])
@pytest.mark.parametrize("dims", [1, 3, 17])
@pytest.mark.parametrize("shared", ["both", "p", "q", "neither"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kl_matches_closed_form_and_torch(backend, rows, dims, shared, dtype):
    rng = np.random.default_rng(rows * 100 + dims)
    mean_p, mean_q = rng.normal(size=(2, rows, dims)).astype(dtype)
    log_std_p = (0.5 * rng.normal(size=(dims,) if shared in ("both", "p") else (rows, dims))).astype(dtype)
    log_std_q = (0.5 * rng.normal(size=(dims,) if shared in ("both", "q") else (rows, dims))).astype(dtype)
    kl = kernels.diag_gaussian_kl(mean_p, log_std_p, mean_q, log_std_q)
    assert kl.shape == (rows,) and kl.dtype == dtype
    rtol = 1e-5 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(kl, reference.diag_gaussian_kl(mean_p, log_std_p, mean_q, log_std_q),
                               rtol=rtol, atol=rtol)
    np.testing.assert_allclose(kl, torch_kl(mean_p, log_std_p, mean_q, log_std_q), rtol=rtol, atol=rtol)
    assert np.all(kl >= -rtol)


def test_kl_of_a_distribution_with_itself_is_zero(backend):
    rng = np.random.default_rng(5)
    means = rng.normal(size=(20, 4))
    log_std = rng.normal(size=4)
    np.testing.assert_allclose(kernels.diag_gaussian_kl(means, log_std, means, log_std), 0.0, atol=1e-12)
    perturbed = kernels.diag_gaussian_kl(means, log_std, means + 0.1, log_std)
    assert np.all(perturbed > 0)


def test_kl_non_contiguous_and_mixed_dtypes(backend):
    rng = np.random.default_rng(6)
    wide = rng.normal(size=(4, 50, 6))
    mean_p, mean_q = wide[0, :, ::2], wide[1, :, 1::2]  # strided views, 3 dims
    log_std_p, log_std_q = wide[2, :, ::2].T.copy().T, wide[3, 0, ::2]
    assert not mean_p.flags.c_contiguous and not log_std_p.flags.c_contiguous
    kl = kernels.diag_gaussian_kl(mean_p, log_std_p, mean_q.astype(np.float32), log_std_q)
    assert kl.dtype == np.float64
    np.testing.assert_allclose(kl, reference.diag_gaussian_kl(mean_p, log_std_p, mean_q.astype(np.float32),
                                                               log_std_q), rtol=1e-12)


@pytest.mark.parametrize("arguments, message", [
    (dict(mean_p=np.zeros(3)), "diag_gaussian_kl: mean_p has shape (3,), expected (rows, dims)"),
    (dict(mean_q=np.zeros((4, 3))), "diag_gaussian_kl: mean_q has shape (4, 3), expected (5, 3)"),
    (dict(log_std_p=np.zeros(2)), "diag_gaussian_kl: log_std_p has shape (2,), expected (5, 3) or (3,)"),
    (dict(log_std_q=np.zeros((3, 5))), "diag_gaussian_kl: log_std_q has shape (3, 5), expected (5, 3) or (3,)"),
    (dict(mean_q=np.zeros((5, 3), complex)), "diag_gaussian_kl: mean_q must hold real numbers"),
])
def test_kl_rejects_bad_arguments(backend, arguments, message):
    call = dict(mean_p=np.zeros((5, 3)), log_std_p=np.zeros(3), mean_q=np.zeros((5, 3)), log_std_q=np.zeros(3))
    call.update(arguments)
    with pytest.raises(ValueError) as error:
        kernels.diag_gaussian_kl(**call)
    assert str(error.value).startswith(message)


# ------------------------------------------------------------------ backend

def run_python(code: str, **environment):
    env = {**os.environ, **environment}
    return subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True,
                          env=env, timeout=60)


def test_missing_extension_falls_back_to_numpy_with_one_warning():
    code = (
        "import sys, warnings\n"
        "sys.modules['gpo_mpi._kernels'] = None  # as if the extension were not built\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import gpo_mpi.kernels as k\n"
        "    import gpo_mpi.kernels\n"
        "    k.gae([1.0], [0.0], [0.0], [True], [False], 0.99, 0.95)\n"
        "print(k.BACKEND, len(caught), caught[0].category.__name__, caught[0].message)\n"
    )
    result = run_python(code, GPO_MPI_KERNELS="auto")
    assert result.returncode == 0, result.stderr
    backend, count, category, message = result.stdout.split(" ", 3)
    assert (backend, count, category) == ("numpy", "1", "RuntimeWarning")
    assert "C++ kernels not built" in message


def test_backend_can_be_forced():
    numpy_run = run_python("import gpo_mpi.kernels as k; print(k.BACKEND)", GPO_MPI_KERNELS="numpy")
    assert numpy_run.stdout.strip() == "numpy" and "Warning" not in numpy_run.stderr
    missing = run_python("import sys; sys.modules['gpo_mpi._kernels'] = None; import gpo_mpi.kernels",
                         GPO_MPI_KERNELS="cpp")
    assert missing.returncode != 0 and "GPO_MPI_KERNELS=cpp but the C++ kernels are not built" in missing.stderr
    bad = run_python("import gpo_mpi.kernels", GPO_MPI_KERNELS="fortran")
    assert bad.returncode != 0 and "GPO_MPI_KERNELS must be auto, cpp or numpy" in bad.stderr
