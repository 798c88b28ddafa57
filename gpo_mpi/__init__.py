"""gpo-mpi: Genetic Policy Optimization (Gangwani & Peng, ICLR 2018) over MPI.

Where each part of the paper lives:

- ``kernels``  GAE and the diagonal-Gaussian KL (C++ extension ``_kernels``
               with numpy versions in ``kernels/reference.py``)
- ``mpi``      every MPI call: broadcasts, gathers, reductions, abort on error
- ``cli``      the ``gpo-mpi`` command

The genetic operators (mutate, select, crossover) and the round loop of
Algorithm 1 join these as the issues that build them land.
"""
__version__ = "0.1.0"
