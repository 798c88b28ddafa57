"""Run under mpiexec: rank RANK raises while the others wait in a collective.

    mpiexec -n N python raise_on_rank.py RANK

Without gpo_mpi.mpi.abort_on_uncaught_exception the other ranks would wait
in Barrier forever; with it the launcher ends the whole job. The failing
rank prints "failing at <time.time()>" before it raises.
"""
import sys
import time

from gpo_mpi import mpi

comm = mpi.world()
mpi.abort_on_uncaught_exception(comm)
failing_rank = int(sys.argv[1])
if comm.Get_rank() == failing_rank:
    time.sleep(0.5)  # let the others reach the barrier first
    print(f"failing at {time.time():.3f}", file=sys.stderr, flush=True)
    raise ValueError(f"deliberate failure on rank {failing_rank}")
comm.Barrier()
print("barrier passed: the failing rank did not stop the job", flush=True)
