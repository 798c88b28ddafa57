"""Run under mpiexec: gpo-mpi, with rank 0 killed outright (SIGKILL) after a given iteration,
once its TensorBoard events of that iteration are on disk.

    mpiexec -n N python killed_after.py ITERATION [gpo-mpi arguments...]

The iterations since the last checkpoint are then in the event files but not in the run
file: a resumed run logs them again, and must purge the first copies.
"""
import os
import signal
import sys

from gpo_mpi import cli, engine

at_iteration = int(sys.argv[1])
record_iteration = engine.Population.record_iteration


def record_then_die(self, round_index, stats):
    record_iteration(self, round_index, stats)
    if self.rank == 0 and self.iteration == at_iteration:
        self.recorder.scalars.flush()
        os.kill(os.getpid(), signal.SIGKILL)


engine.Population.record_iteration = record_then_die
sys.exit(cli.main(sys.argv[2:]))
