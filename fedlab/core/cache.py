"""Opt-in persistent compilation cache: a run whose round program was compiled before (same
model, strategy, plan and JAX version) loads it from disk instead of compiling it again."""
from __future__ import annotations

import os
import pathlib

import jax
from jax.experimental.compilation_cache import compilation_cache


def cache_root() -> pathlib.Path:
    """fedlab's cache directory: $FEDLAB_CACHE, else ~/.cache/fedlab. Compiled programs go to its
    ``jax/``, datasets converted for disk training to its ``disk/``."""
    root = os.environ.get("FEDLAB_CACHE")
    return (pathlib.Path(root) if root else pathlib.Path.home() / ".cache" / "fedlab").expanduser()


def enable_compilation_cache(path: str | os.PathLike | None = None,
                             min_compile_seconds: float = 0.0) -> pathlib.Path:
    """Turn on JAX's persistent compilation cache in ``path`` (default: ``cache_root() / "jax"``,
    i.e. $FEDLAB_CACHE/jax or ~/.cache/fedlab/jax) for every compiled program that took at least
    ``min_compile_seconds`` to compile (default: all), and return the path. This sets JAX's global
    configuration for the process, e.g. at the top of a notebook or script; a later call with
    another path moves the cache there (JAX keeps the first one it opened unless it is reset)."""
    path = pathlib.Path(path if path is not None else cache_root() / "jax").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()     # opened again, at the configured path, by the next compile
    return path
