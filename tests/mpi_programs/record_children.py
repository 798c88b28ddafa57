"""Run under mpiexec: gpo-mpi, with every child's starting policy and its two parents written down.

    mpiexec -n N python record_children.py DIR [gpo-mpi arguments...]

Each call of crossover.make_child appends to DIR/children-RANK.jsonl: the
member it breeds, the operator, which parent (0 or 1) is the fitter, and the
flat policy parameters of the child as it enters crossover and as it leaves
it, and of both parents.
"""
import json
import os
import sys

from gpo_mpi import cli, crossover
from gpo_mpi.networks import flat_parameters

directory = sys.argv[1]
make_child = crossover.make_child


def recorded_make_child(operator, parents, fitter, parent_data, child, *args):
    name = args[-1]  # "crossover for member I"
    rank = os.environ.get("PMI_RANK", "0")
    at_entry = flat_parameters(child).tolist()
    diagnostics = make_child(operator, parents, fitter, parent_data, child, *args)
    with open(os.path.join(directory, f"children-{rank}.jsonl"), "a") as record:
        record.write(json.dumps(dict(member=int(name.rsplit(" ", 1)[1]), operator=operator, fitter=fitter,
                                     child=at_entry, child_after=flat_parameters(child).tolist(),
                                     parents=[flat_parameters(parent).tolist() for parent in parents])) + "\n")
    return diagnostics


crossover.make_child = recorded_make_child
sys.exit(cli.main(sys.argv[2:]))
