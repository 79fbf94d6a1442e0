"""Speed measurements: the trainer's throughput per strategy, the PyTorch reference, mi_face.

Modules: :mod:`workloads` (cells, workloads, peaks; shared), :mod:`throughput`
(JAX strategies), :mod:`torch_reference` (PyTorch, optional), :mod:`inversion`
(mi_face vmapped against a loop). ``jaxpet.experiments.benchmark`` sweeps them.
"""
