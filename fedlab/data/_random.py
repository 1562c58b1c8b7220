"""Random draws for data preparation: jax.random keys in, numpy arrays out.

Every random choice in fedlab.data comes from a ``jax.random`` key, so the same key gives
the same partition on every machine. Eager jax compiles one program per array shape (about
a quarter of a second each on a small CPU), and data preparation draws arrays of many
shapes, so the raw bits are drawn at a few bucketed sizes (powers of two) and transformed
in numpy: uniforms from 53 random bits, normals by Box-Muller, and log-gamma variates (for
Dirichlet draws) from ``jax.random.loggamma`` at a bucketed shape.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def as_key(key) -> jax.Array:
    """A jax PRNG key from a key (typed or raw uint32) or an int seed."""
    if isinstance(key, (int, np.integer)):
        return jax.random.key(int(key))
    return key


def subkey(key, stage: int) -> jax.Array:
    """An independent key for one stage of a procedure (``fold_in`` of the stage number)."""
    return jax.random.fold_in(as_key(key), stage)


def _bucket(n: int) -> int:
    return max(256, 1 << max(int(n) - 1, 0).bit_length())


def uniform(key, n: int) -> np.ndarray:
    """[n] float64 uniforms on the open interval (0, 1), 53 random bits each."""
    if n == 0:
        return np.zeros(0)
    bits = np.asarray(jax.random.bits(as_key(key), (2, _bucket(n)), jnp.uint32))[:, :n]
    hi = (bits[0] >> np.uint32(5)).astype(np.float64)   # 27 bits
    lo = (bits[1] >> np.uint32(6)).astype(np.float64)   # 26 bits
    return (hi * 2.0**26 + lo + 0.5) / 2.0**53


def permutation(key, n: int) -> np.ndarray:
    """[n] int64 random permutation of range(n)."""
    return np.argsort(uniform(key, n), kind="stable")


def normal(key, shape) -> np.ndarray:
    """float64 standard normals of the given shape (Box-Muller on two uniform draws)."""
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    n = int(np.prod(shape))
    u = uniform(subkey(key, 0), n)
    v = uniform(subkey(key, 1), n)
    return (np.sqrt(-2.0 * np.log(u)) * np.cos(2.0 * np.pi * v)).reshape(shape)


def dirichlet(key, alpha: float, rows: int, dim: int) -> np.ndarray:
    """[rows, dim] float64, each row ~ Dirichlet(alpha * ones(dim)); stable for tiny alpha."""
    n = rows * dim
    size = _bucket(n)
    logg = jax.random.loggamma(as_key(key), jnp.full((size,), alpha, jnp.float32))
    logg = np.asarray(logg, np.float64)[:n].reshape(rows, dim)
    logg -= logg.max(axis=1, keepdims=True)
    p = np.exp(logg)
    return p / p.sum(axis=1, keepdims=True)
