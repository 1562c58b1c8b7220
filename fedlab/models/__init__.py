"""Models as pure ``init(key) -> params`` / ``apply(params, x) -> logits`` functions.

Parameters are plain dicts of arrays (pytrees), so ``jax.tree`` utilities, optax and vmap over
clients work on them directly and a reader sees every weight. Layouts follow ``x @ W + b``.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fedlab.core.registry import register_model
from fedlab.core.types import Model


def _flat(x):
    return x.reshape((x.shape[0], -1))


def _glorot(key, fan_in, fan_out, shape):
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, jnp.float32, -limit, limit)


def _check(name, value, low=1):
    if not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _out_dim(num_classes):
    return num_classes if num_classes > 0 else 1


def _squeeze_regression(num_classes, out):
    return out if num_classes > 0 else out[:, 0]


@register_model("logreg")
def logreg(input_shape, num_classes) -> Model:
    """Multinomial logistic regression (linear regression when num_classes == 0).

    x: [batch, *input_shape] -> logits [batch, num_classes]. Zero initial weights.
    """
    d = math.prod(input_shape)
    k = _out_dim(num_classes)

    def init(key):
        return {"W": jnp.zeros((d, k), jnp.float32), "b": jnp.zeros((k,), jnp.float32)}

    def apply(params, x):
        return _squeeze_regression(num_classes, _flat(x) @ params["W"] + params["b"])

    return Model("logreg", init, apply, num_classes)


@register_model("mlp")
def mlp(input_shape, num_classes, *, hidden=(200, 200)) -> Model:
    """Fully connected ReLU network, e.g. 60-200-200-10 (the shared benchmark's MLP).

    x: [batch, *input_shape] -> logits [batch, num_classes]. Glorot-uniform weights, zero biases.
    """
    hidden = tuple(hidden)
    for h in hidden:
        _check("hidden layer width", h)
    sizes = (math.prod(input_shape),) + hidden + (_out_dim(num_classes),)

    def init(key):
        keys = jax.random.split(key, len(sizes) - 1)
        return [{"W": _glorot(k, fi, fo, (fi, fo)), "b": jnp.zeros((fo,), jnp.float32)}
                for k, fi, fo in zip(keys, sizes[:-1], sizes[1:])]

    def apply(params, x):
        h = _flat(x)
        for layer in params[:-1]:
            h = jax.nn.relu(h @ layer["W"] + layer["b"])
        return _squeeze_regression(num_classes, h @ params[-1]["W"] + params[-1]["b"])

    return Model("mlp", init, apply, num_classes)


@register_model("cnn")
def cnn(input_shape, num_classes, *, channels=(16, 32), dense=64) -> Model:
    """Small CNN for 8x8 or 28x28 images: [3x3 conv, ReLU, 2x2 max-pool] per entry of
    ``channels``, then a dense ReLU layer and the output layer.

    x: [batch, height, width, channels] (or [batch, height, width]) -> logits [batch, num_classes].
    """
    if len(input_shape) == 2:
        input_shape = tuple(input_shape) + (1,)
    if len(input_shape) != 3:
        raise ValueError(f"cnn needs images of shape (height, width[, channels]), got {input_shape}")
    height, width, c_in = input_shape
    convs = []
    for c_out in channels:
        _check("channels", c_out)
        convs.append((c_in, c_out))
        c_in = c_out
        height, width = max(height // 2, 1), max(width // 2, 1)
    flat = height * width * c_in
    k = _out_dim(num_classes)

    def init(key):
        keys = jax.random.split(key, len(convs) + 2)
        params = {"conv": [{"W": _glorot(kk, 9 * ci, 9 * co, (3, 3, ci, co)), "b": jnp.zeros((co,))}
                           for kk, (ci, co) in zip(keys, convs)]}
        params["dense"] = {"W": _glorot(keys[-2], flat, dense, (flat, dense)), "b": jnp.zeros((dense,))}
        params["out"] = {"W": _glorot(keys[-1], dense, k, (dense, k)), "b": jnp.zeros((k,))}
        return params

    def apply(params, x):
        h = x.reshape((x.shape[0],) + tuple(input_shape))
        for layer in params["conv"]:
            h = jax.lax.conv_general_dilated(h, layer["W"], (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            h = jax.nn.relu(h + layer["b"])
            if h.shape[1] >= 2 and h.shape[2] >= 2:
                h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        h = jax.nn.relu(_flat(h) @ params["dense"]["W"] + params["dense"]["b"])
        return _squeeze_regression(num_classes, h @ params["out"]["W"] + params["out"]["b"])

    return Model("cnn", init, apply, num_classes)
