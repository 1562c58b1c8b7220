"""Secure aggregation by pairwise masking (Bonawitz et al. 2017, "Practical Secure Aggregation
for Privacy-Preserving Machine Learning"), simulated with every party in one process.

Client u encodes its vector in fixed point in Z_{2^64} and sends
``y_u = x_u + PRG(b_u) + sum_{v>u} PRG(s_uv) - sum_{v<u} PRG(s_uv)  (mod 2^64)``:
s_uv is an X25519 shared secret (so the pairwise masks cancel in the sum), b_u a private
self-mask seed, PRG is AES-256-CTR keyed by HKDF-SHA256 of the seed. Before masking, each client
Shamir-shares (threshold t, over the prime 2^521 - 1) both b_u and its X25519 private key, so when
clients drop after sharing, the surviving t or more let the server remove the self masks of the
survivors and the now-unmatched pairwise masks of the dropped. Fewer than t survivors: the sum is
unrecoverable and ``TooManyDropouts`` is raised.

What is simulated: the four protocol rounds, the real key agreement, PRG, secret sharing and
modular sums, and the bytes each would put on the wire. Not simulated: signatures and the
authenticated encryption of shares between clients (their bytes are counted), and dropouts in the
unmasking round. Key material comes from ``entropy`` (``os.urandom`` by default): only the masks
depend on it, never the result.
"""
from __future__ import annotations

import os
import time
from typing import Callable, NamedTuple

import jax
import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedlab.core.types import host_aggregator
from fedlab.privacy._flat import unflatten_mean, weighted_rows

PRIME = 2 ** 521 - 1                     # Mersenne prime: the Shamir field, holds any 32-byte secret
FIELD_BYTES = (PRIME.bit_length() + 7) // 8
KEY_BYTES = 32
AEAD_OVERHEAD = 12 + 16                  # nonce + tag of the share encryption (counted, not done)


class TooManyDropouts(RuntimeError):
    """Fewer clients than the threshold survived: the masked sum cannot be unmasked."""


# ------------------------------------------------------------------ primitives

def prg(seed: bytes, length: int) -> np.ndarray:
    """``length`` pseudo-random uint64s: AES-256-CTR keyed by HKDF-SHA256(seed)."""
    key = HKDF(hashes.SHA256(), 32, salt=None, info=b"fedlab secagg prg").derive(seed)
    stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(8 * length))
    return np.frombuffer(stream, dtype="<u8")


def shamir_share(secret: int, num_shares: int, threshold: int, entropy: Callable[[int], bytes]) -> list[int]:
    """Shares f(1), ..., f(num_shares) of a random degree threshold-1 polynomial with f(0) = secret."""
    coeffs = [secret] + [int.from_bytes(entropy(80), "big") % PRIME for _ in range(threshold - 1)]
    shares = []
    for x in range(1, num_shares + 1):
        acc = 0
        for c in reversed(coeffs):        # Horner
            acc = (acc * x + c) % PRIME
        shares.append(acc)
    return shares


def shamir_reconstruct(points: dict[int, int]) -> int:
    """f(0) from {x: f(x)} by Lagrange interpolation (needs at least threshold points)."""
    secret = 0
    for xi, yi in points.items():
        num, den = 1, 1
        for xj in points:
            if xj != xi:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    return secret


def encode(x: np.ndarray, fraction_bits: int) -> np.ndarray:
    """Fixed point in Z_{2^64}: round(x * 2^fraction_bits) as two's complement uint64."""
    return np.round(np.asarray(x, np.float64) * 2.0 ** fraction_bits).astype(np.int64).view(np.uint64)


def decode(x: np.ndarray, fraction_bits: int) -> np.ndarray:
    return x.view(np.int64).astype(np.float64) / 2.0 ** fraction_bits


def _raw_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _pair_seed(private: X25519PrivateKey, public: bytes) -> bytes:
    return private.exchange(X25519PublicKey.from_public_bytes(public))


# ------------------------------------------------------------------ the protocol

class SecAggResult(NamedTuple):
    """total: [d] float64, the decoded sum over the survivors; survivors: their indices;
    masked: [clients, d] uint64, what the server received (rows of dropped clients are zero);
    bytes_up / bytes_down: all clients together; seconds: wall time of the whole simulation."""

    total: np.ndarray
    survivors: np.ndarray
    masked: np.ndarray
    bytes_up: int
    bytes_down: int
    seconds: float


def secure_sum(vectors: np.ndarray, *, threshold: int | None = None, dropped=None,
               fraction_bits: int = 20, entropy: Callable[[int], bytes] = os.urandom) -> SecAggResult:
    """Sum of the clients' vectors, the server seeing only masked vectors.

    vectors: [clients, d] floats; dropped: [clients] bools, clients that vanish after sharing
    their keys (before sending their masked input); threshold: t, the survivors needed
    (default floor(clients / 2) + 1). Raises ``TooManyDropouts`` with fewer than t survivors.
    """
    vectors = np.asarray(vectors, np.float64)
    if vectors.ndim != 2 or vectors.shape[0] < 2:
        raise ValueError(f"vectors must be [clients >= 2, d], got shape {vectors.shape}")
    n, d = vectors.shape
    if not np.all(np.isfinite(vectors)):
        raise ValueError(f"vectors have {int(np.sum(~np.isfinite(vectors)))} NaN or infinite values; secure "
                         "aggregation sums finite fixed-point numbers only (did a client diverge?)")
    t = n // 2 + 1 if threshold is None else threshold
    if not (isinstance(t, (int, np.integer)) and 2 <= t <= n):
        raise ValueError(f"threshold must be an int in [2, clients={n}], got {threshold!r}")
    if not 1 <= fraction_bits <= 52:
        raise ValueError(f"fraction_bits must be in [1, 52], got {fraction_bits}")
    bound = np.abs(vectors).max(initial=0.0) * n * 2.0 ** fraction_bits
    if not bound < 2.0 ** 62:
        raise ValueError(f"fixed-point overflow: clients * max|x| * 2^fraction_bits = {bound:.3g} must be "
                         f"< 2^62; lower fraction_bits (now {fraction_bits}) or scale the inputs")
    dropped = np.zeros(n, bool) if dropped is None else np.asarray(dropped, bool)
    if dropped.shape != (n,):
        raise ValueError(f"dropped must have shape ({n},), got {dropped.shape}")
    start = time.perf_counter()
    up = down = 0

    # Round 0, AdvertiseKeys: each client's X25519 key pair for the pairwise masks.
    private = [X25519PrivateKey.from_private_bytes(entropy(KEY_BYTES)) for _ in range(n)]
    public = [_raw_public(k) for k in private]
    up += n * KEY_BYTES
    down += n * n * KEY_BYTES

    # Round 1, ShareKeys: Shamir shares of the self-mask seed b_u and of the private key.
    self_seed = [entropy(KEY_BYTES) for _ in range(n)]
    seed_shares = [shamir_share(int.from_bytes(b, "big"), n, t, entropy) for b in self_seed]
    key_shares = [shamir_share(int.from_bytes(k.private_bytes_raw(), "big"), n, t, entropy) for k in private]
    share_msg = 2 * FIELD_BYTES + AEAD_OVERHEAD
    up += n * (n - 1) * share_msg
    down += n * (n - 1) * share_msg

    # Round 2, MaskedInputCollection: survivors send y_u (uint64 arithmetic wraps mod 2^64).
    masked = np.zeros((n, d), np.uint64)
    for u in np.flatnonzero(~dropped):
        y = encode(vectors[u], fraction_bits) + prg(self_seed[u], d)
        for v in range(n):
            if v != u:
                mask = prg(_pair_seed(private[u], public[v]), d)
                y = y + mask if v > u else y - mask
        masked[u] = y
    survivors = np.flatnonzero(~dropped)
    up += len(survivors) * d * 8
    if len(survivors) < t:
        raise TooManyDropouts(f"only {len(survivors)} of {n} clients sent masked inputs, below the "
                              f"threshold t={t}: the sum cannot be unmasked")
    down += len(survivors) * n * 4        # the survivor list

    # Round 3, Unmasking: survivors reveal shares of b_v (survivors) and of the private keys
    # (dropped clients); the server reconstructs from t of them and strips the masks.
    helpers = survivors[:t]
    up += len(survivors) * n * (FIELD_BYTES + 4)
    total = masked[survivors].sum(axis=0, dtype=np.uint64)
    for v in survivors:
        b = shamir_reconstruct({int(h) + 1: seed_shares[v][h] for h in helpers})
        total = total - prg(b.to_bytes(KEY_BYTES, "big"), d)
    for u in np.flatnonzero(dropped):
        raw = shamir_reconstruct({int(h) + 1: key_shares[u][h] for h in helpers})
        key_u = X25519PrivateKey.from_private_bytes(raw.to_bytes(KEY_BYTES, "big"))
        for v in survivors:               # y_v holds +PRG(s_uv) if u > v, else -PRG(s_uv)
            mask = prg(_pair_seed(key_u, public[v]), d)
            total = total - mask if u > v else total + mask
    return SecAggResult(decode(total, fraction_bits), survivors, masked, up, down,
                        time.perf_counter() - start)


# ------------------------------------------------------------------ as a strategy's aggregate

def _numpy_seed(key) -> np.ndarray:
    if hasattr(key, "dtype") and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key).ravel()


def secure_aggregator(*, dropout: float = 0.0, threshold: float = 0.5, fraction_bits: int = 20,
                      entropy: Callable[[int], bytes] = os.urandom):
    """A host aggregate(updates, weights, key) computing the weighted mean by secure aggregation.

    Each client with weight w_k > 0 masks [w_k * update_k, w_k]; the server unmasks the two sums
    and divides. dropout: the chance each client drops mid-round (after sharing its keys), drawn
    from ``key``; threshold: the fraction of clients that must survive (t = floor(threshold *
    clients) + 1). Metrics: secagg_bytes, secagg_seconds, secagg_dropped.
    """
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")

    @host_aggregator
    def aggregate(updates, weights, key):
        rows, leaves, treedef = weighted_rows(updates, weights, min_clients=2)
        drops = np.random.default_rng(_numpy_seed(key)).random(len(rows)) < dropout
        t = min(int(threshold * len(rows)) + 1, len(rows))
        result = secure_sum(rows, threshold=max(t, 2), dropped=drops, fraction_bits=fraction_bits,
                            entropy=entropy)
        metrics = {"secagg_bytes": float(result.bytes_up + result.bytes_down),
                   "secagg_seconds": result.seconds, "secagg_dropped": float(drops.sum())}
        return unflatten_mean(result.total, leaves, treedef), metrics

    return aggregate


def secure(strategy, **kwargs):
    """``strategy`` with its weighted mean computed by ``secure_aggregator(**kwargs)``."""
    return strategy._replace(name=f"secure({strategy.name})", aggregate=secure_aggregator(**kwargs))
