"""Host aggregators' plumbing: a stacked update pytree <-> one weighted row per client."""
from __future__ import annotations

import jax
import numpy as np


def weighted_rows(updates, weights, min_clients: int = 1):
    """Rows [w_k * flat(update_k), w_k] for the clients with w_k > 0.

    updates: pytree of [clients, ...] arrays; weights: [clients]. Returns (rows [taken, d + 1],
    leaves, treedef) for ``unflatten_mean``.
    """
    weights = np.asarray(weights, np.float64)
    leaves, treedef = jax.tree.flatten(updates)
    take = np.flatnonzero(weights > 0)
    if len(take) < min_clients:
        raise ValueError(f"this aggregation needs at least {min_clients} clients with weight > 0, got {len(take)}")
    flat = [np.asarray(x, np.float64).reshape(len(weights), -1)[take] for x in leaves]
    return np.concatenate(flat + [np.ones((len(take), 1))], axis=1) * weights[take, None], leaves, treedef


def unflatten_mean(total, leaves, treedef):
    """From the summed rows [sum w_k u_k, sum w_k] back to the mean update pytree (leaf dtypes kept)."""
    mean = total[:-1] / total[-1]
    out, offset = [], 0
    for x in leaves:
        shape = np.shape(x)[1:]
        size = int(np.prod(shape))
        out.append(mean[offset:offset + size].reshape(shape).astype(np.asarray(x).dtype))
        offset += size
    return jax.tree.unflatten(treedef, out)
