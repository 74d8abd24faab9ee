"""The experiment scripts, importable as a package (``from experiments.dba_cifar import table3_training``).

Each script also runs by path, ``python experiments/paper.py ...``, or as ``python -m experiments.paper ...``.
"""
