"""Run under mpiexec: gpo-mpi, with every member's whole state written down before and after each breeding.

    mpiexec -n N python record_breeding.py DIR [gpo-mpi arguments...]

Each breeding appends to DIR/breeding-RANK.jsonl one line per member slot of the rank and moment
("before", "after"): the round, the slot, and its policy and critic parameters, both Adam states,
the KL-penalty weight and the minibatch generator's state.
"""
import json
import os
import sys

from gpo_mpi import cli, engine
from gpo_mpi.learner import adam_state
from gpo_mpi.networks import flat_parameters

directory = sys.argv[1]
crossover = engine.Population.crossover


def member_record(member, round_index, moment):
    return dict(round=round_index, member=member.index, moment=moment, policy=flat_parameters(member.policy).tolist(),
                critic=flat_parameters(member.critic).tolist(),
                policy_adam=adam_state(member.policy_optimizer).tolist(),
                critic_adam=adam_state(member.critic_optimizer).tolist(), beta=member.beta,
                generator=member.generator.get_state().tolist())


def recorded_crossover(self, jobs, round_index):
    before = [member_record(member, round_index, "before") for member in self.members]
    crossover(self, jobs, round_index)
    after = [member_record(member, round_index, "after") for member in self.members]
    with open(os.path.join(directory, f"breeding-{self.rank}.jsonl"), "a") as record:
        record.writelines(json.dumps(line) + "\n" for line in before + after)


engine.Population.crossover = recorded_crossover
sys.exit(cli.main(sys.argv[2:]))
