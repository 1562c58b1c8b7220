"""The shared peer benchmark's workload, generated here so the benchmarks run in a plain clone.

Same semantics (and, draw for draw, the same arrays) as ../shared/bench/gen_data.py: FedProx
Synthetic(alpha, beta) with one ``numpy.random.RandomState(seed)`` stream, client sizes
100 + min(200, floor(LogNormal(3.5, 1))), the first round(0.8 n_k) rows of each client for
training, the rest for testing; plus the fixed initial weights of both models (zeros for
logistic regression; Glorot-uniform weights and zero biases for the 60-200-200-10 MLP, from
RandomState(seed + 12345)). Only numpy is needed.

    python benchmarks/workload.py --clients 1000 --seed 1 --out benchmarks/data/synth_L.npz
"""
from __future__ import annotations

import argparse

import numpy as np

FEATURES, CLASSES, HIDDEN = 60, 10, 200


def generate(num_clients: int, alpha: float = 1.0, beta: float = 1.0, seed: int = 0) -> dict[str, np.ndarray]:
    """The packed arrays X_train [N, 60] float32, y_train [N] int32, train_offsets [K + 1] and the
    same three for the test rows. The draws come in the order client sizes, model means u,
    feature-mean means B, then per client: feature mean v_k, W_k, b_k, the rows' noise."""
    rng = np.random.RandomState(seed)
    sizes = 100 + np.minimum(200, np.floor(rng.lognormal(3.5, 1.0, num_clients))).astype(np.int64)
    model_mean = rng.normal(0.0, np.sqrt(alpha), num_clients)
    feature_mean_mean = rng.normal(0.0, np.sqrt(beta), num_clients)
    scale = np.sqrt(np.arange(1, FEATURES + 1, dtype=np.float64) ** -1.2)    # Sigma = diag(j^-1.2)
    train, test = [], []
    for k in range(num_clients):
        feature_mean = rng.normal(feature_mean_mean[k], 1.0, FEATURES)
        W = rng.normal(model_mean[k], 1.0, (FEATURES, CLASSES))
        b = rng.normal(model_mean[k], 1.0, CLASSES)
        x = feature_mean + scale * rng.normal(0.0, 1.0, (sizes[k], FEATURES))
        y = np.argmax(x @ W + b, axis=1)
        cut = int(round(0.8 * sizes[k]))
        train.append((x[:cut], y[:cut]))
        test.append((x[cut:], y[cut:]))

    def packed(parts, prefix):
        offsets = np.concatenate([[0], np.cumsum([len(y) for _, y in parts])]).astype(np.int64)
        return {f"X_{prefix}": np.concatenate([x for x, _ in parts]).astype(np.float32),
                f"y_{prefix}": np.concatenate([y for _, y in parts]).astype(np.int32),
                f"{prefix}_offsets": offsets}

    return {**packed(train, "train"), **packed(test, "test")}


def initial_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """lr_W, lr_b (zeros) and mlp_W1..3, mlp_b1..3 (x @ W + b layout)."""
    rng = np.random.RandomState(seed + 12345)

    def glorot(fan_in, fan_out):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)

    out = {"lr_W": np.zeros((FEATURES, CLASSES), np.float32), "lr_b": np.zeros(CLASSES, np.float32)}
    for i, (fan_in, fan_out) in enumerate(((FEATURES, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, CLASSES)), 1):
        out[f"mlp_W{i}"] = glorot(fan_in, fan_out)
        out[f"mlp_b{i}"] = np.zeros(fan_out, np.float32)
    return out


def write(path, num_clients: int, seed: int, alpha: float = 1.0, beta: float = 1.0) -> None:
    np.savez(path, **generate(num_clients, alpha, beta, seed), **initial_weights(seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--out", required=True)
    a = parser.parse_args()
    write(a.out, a.clients, a.seed, a.alpha, a.beta)
    print(f"{a.out}: {a.clients} clients, seed {a.seed}")


if __name__ == "__main__":
    main()
