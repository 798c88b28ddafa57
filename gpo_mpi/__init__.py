"""gpo-mpi: Genetic Policy Optimization (Gangwani & Peng, ICLR 2018) over MPI.

Where each part of the paper lives:

- ``config``     ``RunConfig``: every setting with its default, presets, TOML and flags
- ``engine``     Algorithm 1: the rounds of MUTATE, SELECT, CROSSOVER over the ranks
- ``record``     rank 0's record of a run (run-file rows, progress lines, TensorBoard), without MPI
- ``learner``    a member's networks, optimizers and state, shared by the three operators
- ``mutate``     PPO (adaptive KL penalty) and A2C, data sharing, the KL matrix
- ``select``     performance and diversity fitness, choosing couples and the fitter parent of each
- ``crossover``  state-space crossover by imitation (selector, DAgger), parameter-space crossover
- ``networks``   policy, critic and selector networks, their numpy forwards, flat parameters
- ``rollout``    environments, sampling, shared observation normalization
- ``evaluate``   evaluation episodes outside training
- ``terrain``    the hilly terrain tasks (HopperHilly-v5, ...), registered on import
- ``kernels``    GAE and the diagonal-Gaussian KL (C++ extension ``_kernels``, numpy references)
- ``mpi``        every MPI call: broadcasts, gathers, reductions, abort on error
- ``seeds``      every seed derived from the run's seed, by slot, iteration and round
- ``runfile``, ``checkpoint``, ``statefile``, ``snapshot``, ``paths``  the HDF5 run file, resuming from it,
  checkpoint states stored without pickle, environment snapshots, output paths checked before anything is
  written
- ``cli``, ``tools``, ``plot``, ``scalars``  the ``gpo-mpi`` command, its tools, figures, TensorBoard
- ``summary``, ``compare``  a finished run as a small JSON summary; many seeds of several variants compared
  with IQM, bootstrap intervals and the probability of improvement
"""
__version__ = "0.1.0"

from .config import ConfigError as ConfigError  # noqa: E402  what every function here raises for bad input


def train(run_config=None, **options) -> str:
    """Train as the `gpo-mpi` command does, from Python (alone, or on every rank under mpiexec):
    `gpo_mpi.train(env="Walker2d-v5", total_steps=1e6, out="walker.h5")`. Returns the run file's
    path; see gpo_mpi.cli.train for the options (preset, resume, overwrite)."""
    from .cli import train as train_run

    return train_run(run_config, **options)


def load_policy(run_file: str, member: int | None = None):
    """A member of a run (default: the best) as a torch module on raw observations of any float
    dtype: `policy.predict(obs)` gives mean actions for numpy observations (one or a batch) as a
    numpy array, `policy(obs)` for tensors, `deterministic=False` sampled ones, `policy.value(obs)`
    the critic's values. Its outputs carry no autograd graph. Reads the end of a finished run, or
    the latest checkpoint of one that is still running or was stopped."""
    from .tools import acting_policy

    return acting_policy(run_file, member)


def register_hilly_envs() -> None:
    """Register HopperHilly-v5, Walker2dHilly-v5, HalfCheetahHilly-v5 and AntHilly-v5
    (gpo_mpi.terrain) with gymnasium; safe to call again. By name only, so
    MuJoCo loads when one is made, not on `import gpo_mpi`."""
    import gymnasium

    for task in ("Hopper", "Walker2d", "HalfCheetah", "Ant"):
        if f"{task}Hilly-v5" not in gymnasium.registry:
            gymnasium.register(f"{task}Hilly-v5", entry_point=f"gpo_mpi.terrain:{task}HillyEnv",
                               max_episode_steps=1000)  # as the plain v5 tasks


register_hilly_envs()
