"""Random draws for data preparation: jax.random keys in, numpy arrays out.

Every random choice in fedlab.data comes from a ``jax.random`` key, so the same key gives
the same partition on every machine. Eager jax compiles one program per array shape (about
a quarter of a second each on a small CPU), and data preparation draws arrays of many
shapes, so the raw draws come in chunks of one fixed shape (one compile, ever) and are
transformed in numpy: uniforms from 53 random bits, normals by Box-Muller, and log-gamma
variates (for Dirichlet draws) from ``jax.random.loggamma``.
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


CHUNK = 1 << 18   # values per compiled draw; larger draws concatenate chunks


GAMMA_CHUNK = 1 << 12  # log-gamma draws are costlier and needed only per class x client


def _chunks(key, n: int, draw, chunk: int = CHUNK) -> np.ndarray:
    """Concatenate ``draw(key, i)`` (chunk i: ``chunk`` values, last axis) up to n values."""
    parts = [np.asarray(draw(key, np.uint32(i))) for i in range(-(-n // chunk))]
    return np.concatenate(parts, axis=-1)[..., :n]


@jax.jit
def _bits(key, i):
    """Chunk i's raw bits: one program for the fold_in and the draw (eager, they were four)."""
    return jax.random.bits(jax.random.fold_in(key, i), (2, CHUNK), jnp.uint32)


def uniform(key, n: int) -> np.ndarray:
    """[n] float64 uniforms on the open interval (0, 1), 53 random bits each."""
    if n == 0:
        return np.zeros(0)
    bits = _chunks(as_key(key), n, _bits)
    hi = (bits[0] >> np.uint32(5)).astype(np.float64)   # 27 bits
    lo = (bits[1] >> np.uint32(6)).astype(np.float64)   # 26 bits
    return (hi * 2.0**26 + lo + 0.5) / 2.0**53


def permutation(key, n: int) -> np.ndarray:
    """[n] int64 random permutation of range(n)."""
    return np.argsort(uniform(key, n), kind="stable")


def normal(key, shape) -> np.ndarray:
    """float64 standard normals of the given shape (Box-Muller, both outputs of each pair)."""
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    n = int(np.prod(shape))
    half = (n + 1) // 2
    radius = np.sqrt(-2.0 * np.log(uniform(subkey(key, 0), half)))
    angle = 2.0 * np.pi * uniform(subkey(key, 1), half)
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:n].reshape(shape)


def dirichlet(key, alpha: float, rows: int, dim: int) -> np.ndarray:
    """[rows, dim] float64, each row ~ Dirichlet(alpha * ones(dim)); stable for tiny alpha."""
    alphas = jnp.full((GAMMA_CHUNK,), alpha, jnp.float32)
    logg = _chunks(as_key(key), rows * dim, lambda k, i: jax.random.loggamma(jax.random.fold_in(k, i), alphas),
                   GAMMA_CHUNK)
    logg = logg.astype(np.float64).reshape(rows, dim)
    logg -= logg.max(axis=1, keepdims=True)
    p = np.exp(logg)
    return p / p.sum(axis=1, keepdims=True)
