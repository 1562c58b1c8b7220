"""Opt-in persistent compilation cache: a run whose round program was compiled before (same
model, strategy, plan and JAX version) loads it from disk instead of compiling it again."""
from __future__ import annotations

import os
import pathlib

import jax


def enable_compilation_cache(path: str | os.PathLike | None = None,
                             min_compile_seconds: float = 0.0) -> pathlib.Path:
    """Turn on JAX's persistent compilation cache in ``path`` (default: $FEDLAB_CACHE or
    ~/.cache/fedlab/jax) for every compiled program that took at least ``min_compile_seconds``
    to compile (default: all), and return the path. This sets JAX's global configuration for the process; call it once, e.g. at the top
    of a notebook or script."""
    if path is None:
        path = os.environ.get("FEDLAB_CACHE") or pathlib.Path.home() / ".cache" / "fedlab" / "jax"
    path = pathlib.Path(path).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
