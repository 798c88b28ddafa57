"""Speed of the C++ kernels against their peers, measured in one run.

    python bench/kernels.py [--out docs/bench-kernels.md]

GAE: the C++ kernel against the vectorized numpy version (the fastest numpy
one we have; the fallback backend), the step-by-step numpy recursion, and a
plain Python loop over lists. KL: the C++ kernel against the numpy closed
form, a hand-written torch formula and torch.distributions. Each figure is
the best of several repeats, in ns per element (per batch step for GAE, per
row for KL), at T = 2,048 (one PPO batch) and T = 1,000,000. Targets: GAE at
most 3 ns/element and at least 15x faster than the best numpy version; KL
at least 3x faster than the torch formula.
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from gpo_mpi import kernels
from gpo_mpi.kernels import reference

torch.set_num_threads(1)

GAMMA, LAM = 0.99, 0.95
ACTION_DIMS = 3  # Hopper-v5


def best_ns_per_element(function, n_elements: int, budget_s: float = 0.5, max_repeats: int = 200) -> float:
    """Best time of repeated calls, in ns per element."""
    function()  # warm-up: first-call allocations, lazy imports
    best = float("inf")
    spent = 0.0
    for _ in range(max_repeats):
        start = time.perf_counter_ns()
        function()
        elapsed = time.perf_counter_ns() - start
        best = min(best, elapsed)
        spent += elapsed * 1e-9
        if spent > budget_s:
            break
    return best / max(n_elements, 1)


def gae_python_lists(rewards, values, next_values, terminated, truncated, gamma, lam):
    """GAE as a plain Python loop over lists, the way it is often written."""
    advantages = [0.0] * len(rewards)
    next_advantage = 0.0
    for t in reversed(range(len(rewards))):
        if terminated[t] or truncated[t]:
            next_advantage = 0.0
        bootstrap = 0.0 if terminated[t] else gamma * next_values[t]
        next_advantage = rewards[t] + bootstrap - values[t] + gamma * lam * next_advantage
        advantages[t] = next_advantage
    return advantages


def torch_kl_formula(mean_p, log_std_p, mean_q, log_std_q):
    """The closed form written directly in torch, as a policy-gradient code would."""
    var_p = torch.exp(2 * log_std_p)
    var_q = torch.exp(2 * log_std_q)
    return (log_std_q - log_std_p + (var_p + (mean_p - mean_q) ** 2) / (2 * var_q) - 0.5).sum(-1)


def torch_kl_distributions(mean_p, log_std_p, mean_q, log_std_q):
    p = torch.distributions.Normal(mean_p, log_std_p.exp())
    q = torch.distributions.Normal(mean_q, log_std_q.exp())
    return torch.distributions.kl_divergence(p, q).sum(-1)


def gae_inputs(n: int, rng: np.random.Generator):
    rewards, values, next_values = rng.normal(size=(3, n)).astype(np.float32)
    terminated = rng.random(n) < 1 / 500
    truncated = rng.random(n) < 1 / 1000
    return rewards, values, next_values, terminated, truncated


def bench_gae(n: int, rng: np.random.Generator) -> dict[str, float]:
    args = gae_inputs(n, rng)
    args64 = tuple(a.astype(np.float64) if a.dtype == np.float32 else a for a in args)
    lists = tuple(a.tolist() for a in args)
    slow_budget = 0.3 if n <= 10_000 else 0.0  # one timed call at T = 1e6
    return {
        "C++ float32": best_ns_per_element(lambda: kernels.gae(*args, GAMMA, LAM), n),
        "C++ float64": best_ns_per_element(lambda: kernels.gae(*args64, GAMMA, LAM), n),
        "numpy vectorized": best_ns_per_element(lambda: reference.gae_numpy(*args, GAMMA, LAM), n),
        "numpy recursion": best_ns_per_element(lambda: reference.gae_loop(*args, GAMMA, LAM), n, slow_budget, 3),
        "Python loop": best_ns_per_element(lambda: gae_python_lists(*lists, GAMMA, LAM), n, slow_budget, 3),
    }


def bench_kl(n: int, rng: np.random.Generator, shared_log_std: bool) -> dict[str, float]:
    mean_p, mean_q = rng.normal(size=(2, n, ACTION_DIMS)).astype(np.float32)
    log_std_shape = (ACTION_DIMS,) if shared_log_std else (n, ACTION_DIMS)
    log_std_p, log_std_q = (0.3 * rng.normal(size=(2,) + log_std_shape)).astype(np.float32)
    arrays = (mean_p, log_std_p, mean_q, log_std_q)
    tensors = tuple(torch.from_numpy(a) for a in arrays)
    with torch.no_grad():
        return {
            "C++ float32": best_ns_per_element(lambda: kernels.diag_gaussian_kl(*arrays), n),
            "numpy closed form": best_ns_per_element(lambda: reference.diag_gaussian_kl(*arrays), n),
            "torch formula": best_ns_per_element(lambda: torch_kl_formula(*tensors), n),
            "torch.distributions": best_ns_per_element(lambda: torch_kl_distributions(*tensors), n),
        }


def table(title: str, results: dict[int, dict[str, float]], peer: str) -> list[str]:
    sizes = sorted(results)
    lines = [f"### {title}", "", "| implementation | " + " | ".join(f"T = {n:,} ns/el" for n in sizes)
             + " | " + " | ".join(f"x C++ at T = {n:,}" for n in sizes) + " |",
             "|---" * (1 + 2 * len(sizes)) + "|"]
    for name in results[sizes[0]]:
        times = [results[n][name] for n in sizes]
        ratios = [results[n][name] / results[n]["C++ float32"] for n in sizes]
        lines.append(f"| {name} | " + " | ".join(f"{t:.2f}" for t in times) + " | "
                     + " | ".join(f"{r:.1f}" for r in ratios) + " |")
    lines.append("")
    lines.append(f"(ratios: that implementation's time over C++ float32's; the target peer is {peer})")
    lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the tables to this markdown file")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 1_000_000])
    args = parser.parse_args()
    if kernels.BACKEND != "cpp":
        raise SystemExit("bench/kernels.py: the C++ kernels are not built; run `pip install -e .` first")

    rng = np.random.default_rng(0)
    gae_results = {n: bench_gae(n, rng) for n in args.sizes}
    kl_shared = {n: bench_kl(n, rng, shared_log_std=True) for n in args.sizes}
    kl_per_row = {n: bench_kl(n, rng, shared_log_std=False) for n in args.sizes}

    lines = [f"Machine: {platform.processor() or platform.machine()}, {platform.python_implementation()} "
             f"{platform.python_version()}, numpy {np.__version__}, torch {torch.__version__} (1 thread)", ""]
    lines += table("GAE (float32 inputs, episodes of ~350 steps)", gae_results, "numpy vectorized")
    lines += table(f"KL, log-std shared by all rows ({ACTION_DIMS} action dims)", kl_shared, "torch formula")
    lines += table(f"KL, log-std per row ({ACTION_DIMS} action dims)", kl_per_row, "torch formula")

    lines.append("### Targets")
    lines.append("")
    for n in args.sizes:
        gae_ns = gae_results[n]["C++ float32"]
        gae_speedup = gae_results[n]["numpy vectorized"] / gae_ns
        lines.append(f"- T = {n:,}: GAE {gae_ns:.2f} ns/element (target <= 3: {'met' if gae_ns <= 3 else 'MISSED'}), "
                     f"{gae_speedup:.1f}x the vectorized numpy (target >= 15: {'met' if gae_speedup >= 15 else 'MISSED'})")
        for label, results in (("shared log-std", kl_shared), ("per-row log-std", kl_per_row)):
            speedup = results[n]["torch formula"] / results[n]["C++ float32"]
            lines.append(f"- T = {n:,}: KL ({label}) {speedup:.1f}x the torch formula "
                         f"(target >= 3: {'met' if speedup >= 3 else 'MISSED'})")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
