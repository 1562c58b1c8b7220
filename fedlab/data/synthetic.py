"""The FedProx Synthetic(alpha, beta) generator (Li et al., "Federated Optimization in
Heterogeneous Networks", MLSys 2020, section 5.1).

Client k draws its own softmax-regression model and its own feature mean::

    u_k ~ N(0, alpha),  W_k ~ N(u_k, 1) in R^{60 x 10},  b_k ~ N(u_k, 1) in R^10
    B_k ~ N(0, beta),   v_k ~ N(B_k, 1) in R^60
    x ~ N(v_k, Sigma),  Sigma = diag(j^-1.2), j = 1..60
    y = argmax(softmax(x W_k + b_k))

alpha controls how much the local models differ, beta how much the local features differ.
N(m, s) is read as mean m and variance s, the paper's notation (the authors' released
script passes alpha and beta as standard deviations; both readings agree for alpha, beta in
{0, 1}). Client sizes follow the authors' script: 50 + floor(LogNormal(4, 2)), a heavy tail.
Synthetic-IID shares one W, b ~ N(0, 1) and draws every x from N(0, Sigma).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fedlab.data import _random
from fedlab.data.partition import _check_number

NUM_FEATURES = 60
NUM_CLASSES = 10


class SyntheticDraw(NamedTuple):
    """One draw of the generator. x: [N, 60] float32; y: [N] int32; client_ids: [N];
    sizes: [K] rows per client; W: [K, 60, 10]; b: [K, 10]; v: [K, 60] feature means;
    u: [K] model means; B: [K] feature-mean means."""

    x: np.ndarray
    y: np.ndarray
    client_ids: np.ndarray
    sizes: np.ndarray
    W: np.ndarray
    b: np.ndarray
    v: np.ndarray
    u: np.ndarray
    B: np.ndarray


def feature_variances(num_features: int = NUM_FEATURES) -> np.ndarray:
    """[num_features] the diagonal of Sigma: j^-1.2 for j = 1..num_features."""
    return np.arange(1, num_features + 1, dtype=np.float64) ** -1.2


def generate_synthetic(key, num_clients: int = 30, alpha: float = 1.0, beta: float = 1.0,
                       iid: bool = False, num_features: int = NUM_FEATURES,
                       num_classes: int = NUM_CLASSES) -> SyntheticDraw:
    """Draw Synthetic(alpha, beta) (or Synthetic-IID when ``iid``) for ``num_clients`` clients."""
    if not isinstance(num_clients, (int, np.integer)) or isinstance(num_clients, bool) or num_clients < 1:
        raise ValueError(f"num_clients: must be an integer >= 1, got {num_clients}")
    for name, value in (("alpha", alpha), ("beta", beta)):
        _check_number(value, f"dataset: synthetic {name}", 0, strict=False)
    k, d, c = int(num_clients), num_features, num_classes
    z = lambda stage, shape: _random.normal(_random.subkey(key, stage), shape)  # noqa: E731
    sizes = 50 + np.floor(np.exp(4.0 + 2.0 * z(0, k))).astype(np.int64)
    if iid:
        u = np.zeros(k)
        B = np.zeros(k)
        W = np.broadcast_to(z(1, (d, c)), (k, d, c))
        b = np.broadcast_to(z(2, c), (k, c))
        v = np.zeros((k, d))
    else:
        u = np.sqrt(alpha) * z(3, k)
        B = np.sqrt(beta) * z(4, k)
        W = u[:, None, None] + z(1, (k, d, c))
        b = u[:, None] + z(2, (k, c))
        v = B[:, None] + z(5, (k, d))
    client_ids = np.repeat(np.arange(k), sizes)
    x = (v[client_ids] + np.sqrt(feature_variances(d)) * z(6, (int(sizes.sum()), d))).astype(np.float32)
    y = np.empty(len(x), np.int32)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    for i in range(k):                                  # one matmul per client, not per row
        rows = slice(starts[i], starts[i + 1])
        y[rows] = np.argmax(x[rows].astype(np.float64) @ W[i] + b[i], axis=1)
    return SyntheticDraw(x, y, client_ids, sizes, np.asarray(W), np.asarray(b),
                         v, u, B)
