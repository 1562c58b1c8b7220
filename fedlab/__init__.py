"""fedlab: a Jupyter-first research workbench for federated learning on JAX."""
