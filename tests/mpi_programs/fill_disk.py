"""Run under mpiexec: gpo-mpi, with the run file's file system filled up by rank 0 after a given iteration.

    mpiexec -n N python fill_disk.py ITERATION [gpo-mpi arguments...]

After ITERATION, rank 0 writes RUN.h5.filler beside the run file until the
file system is full, so the next checkpoint cannot be written. Deleting the
filler makes room again.
"""
import errno
import sys

from gpo_mpi import cli, engine

at_iteration = int(sys.argv[1])
record_iteration = engine.Population.record_iteration


def record_then_fill(self, round_index, stats):
    record_iteration(self, round_index, stats)
    if self.rank == 0 and self.iteration == at_iteration:
        with open(self.config.out + ".filler", "wb") as filler:
            try:
                while True:
                    filler.write(b"\0" * (1 << 16))
                    filler.flush()
            except OSError as error:
                assert error.errno == errno.ENOSPC, error


engine.Population.record_iteration = record_then_fill
sys.exit(cli.main(sys.argv[2:]))
