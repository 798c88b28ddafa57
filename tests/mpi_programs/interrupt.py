"""Run under mpiexec: gpo-mpi, with a real SIGUSR1 sent to one rank after a given iteration.

    mpiexec -n N python interrupt.py RANK ITERATION [gpo-mpi arguments...]

ITERATION 0 sends it during start-up, before the run has set its handlers;
ITERATION c sends it in the middle of the first crossover.
The ranks learn of the signal at their next agreement point, write a
checkpoint and exit with gpo-mpi's "stopped" code.
"""
import os
import signal
import sys

from gpo_mpi import cli, engine

rank_to_signal = int(sys.argv[1])
in_crossover = sys.argv[2] == "c"
at_iteration = -1 if in_crossover else int(sys.argv[2])
record_iteration = engine.Population.record_iteration
breed = engine.Population.breed


def record_then_signal(self, round_index, stats):
    record_iteration(self, round_index, stats)
    if self.rank == rank_to_signal and self.iteration == at_iteration:
        os.kill(os.getpid(), signal.SIGUSR1)


def signal_then_breed(self, *args, **kwargs):
    if self.rank == rank_to_signal and in_crossover:
        os.kill(os.getpid(), signal.SIGUSR1)
    return breed(self, *args, **kwargs)


population_init = engine.Population.__init__


def signal_then_init(self, config, comm, resume=False):
    if comm.Get_rank() == rank_to_signal and at_iteration == 0:
        os.kill(os.getpid(), signal.SIGUSR1)
    population_init(self, config, comm, resume)


engine.Population.record_iteration = record_then_signal
engine.Population.__init__ = signal_then_init
engine.Population.breed = signal_then_breed
sys.exit(cli.main(sys.argv[3:]))
