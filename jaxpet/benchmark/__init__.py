"""Speed measurements: the trainer's throughput per strategy, the PyTorch reference, mi_face.

Modules: :mod:`workloads` (cells, workloads, peaks; shared), :mod:`throughput`
(JAX strategies), :mod:`torch_reference` (PyTorch, optional), :mod:`inversion`
(mi_face vmapped against a loop), :mod:`memory` (bytes per model), :mod:`profile`
(where a step's time goes), :mod:`sweep` (the cells in order and what is kept of
each) and :mod:`tables` (the summary). ``jaxpet.experiments.benchmark`` runs them.
"""
