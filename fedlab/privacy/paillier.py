"""Aggregation under Paillier encryption (python-paillier, ``phe``), with packing.

Paillier is additively homomorphic: multiplying ciphertexts mod n^2 adds the plaintexts. Each
client quantises its vector to fixed point (``fraction_bits``), offsets it to be non-negative and
packs ``slots`` values into one plaintext of ``slot_bits`` = 64 bits per value::

    plaintext = sum_j (round(x_j * 2^f) + 2^(value_bits - 1)) << (64 j),   value_bits = 64 - headroom_bits

The ``headroom_bits`` on top of each value let up to 2^headroom_bits clients be summed without a
slot overflowing into the next. A 2048-bit key packs 31 values per ciphertext, so a model of
thousands of parameters costs tens of encryptions per client instead of thousands. The server
multiplies the clients' ciphertexts; the key holder decrypts the packed sums and removes the
offsets. ``packed=False`` uses one value per ciphertext (the unpacked baseline).
"""
from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np
from phe import paillier

from fedlab.core.types import host_aggregator
from fedlab.privacy._flat import unflatten_mean, weighted_rows

SLOT_BITS = 64


class PaillierResult(NamedTuple):
    """total: [d] float64 decoded sum; ciphertexts_per_client; bytes_up (all clients' ciphertexts);
    seconds_encrypt (all clients), seconds_sum (server), seconds_decrypt (key holder)."""

    total: np.ndarray
    ciphertexts_per_client: int
    bytes_up: int
    seconds_encrypt: float
    seconds_sum: float
    seconds_decrypt: float


class Codec(NamedTuple):
    """Fixed-point packing of float vectors into Paillier plaintexts (see the module docstring)."""

    fraction_bits: int
    headroom_bits: int
    slots: int

    @property
    def value_bits(self) -> int:
        return SLOT_BITS - self.headroom_bits

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """[d] floats -> [d] uint64 offset fixed point; ValueError if a value is NaN, infinite or
        does not fit (a NaN would otherwise encode as garbage that spills into the next slot)."""
        x = np.asarray(x, np.float64)
        if not np.all(np.isfinite(x)):
            raise ValueError(f"the update has {int(np.sum(~np.isfinite(x)))} NaN or infinite values; "
                             "Paillier encrypts finite fixed-point numbers only (did the client diverge?)")
        q = np.round(x * 2.0 ** self.fraction_bits)
        limit = 2.0 ** (self.value_bits - 1)
        if np.abs(q).max(initial=0.0) >= limit:
            raise ValueError(f"value {np.abs(x).max():.3g} does not fit in {self.value_bits} bits at "
                             f"fraction_bits={self.fraction_bits}; lower fraction_bits or headroom_bits")
        return (q.astype(np.int64) + np.int64(2 ** (self.value_bits - 1))).astype(np.uint64)

    def pack(self, q: np.ndarray) -> list[int]:
        """[d] uint64 -> ceil(d / slots) Python ints (little-endian 64-bit slots)."""
        padded = np.zeros(-(-len(q) // self.slots) * self.slots, "<u8")
        padded[:len(q)] = q
        return [int.from_bytes(row.tobytes(), "little") for row in padded.reshape(-1, self.slots)]

    def unpack(self, plaintexts: list[int], d: int, num_clients: int) -> np.ndarray:
        """Packed sums of ``num_clients`` vectors -> [d] float64 sum."""
        raw = b"".join(p.to_bytes(8 * self.slots, "little") for p in plaintexts)
        sums = np.frombuffer(raw, "<u8")[:d]                     # < 2^64: headroom keeps slots apart
        offsets = np.uint64(num_clients * 2 ** (self.value_bits - 1))
        return (sums - offsets).view(np.int64) / 2.0 ** self.fraction_bits


def make_codec(public_key: paillier.PaillierPublicKey, *, fraction_bits: int = 16, headroom_bits: int = 16,
               packed: bool = True) -> Codec:
    if not 1 <= headroom_bits <= 32:
        raise ValueError(f"headroom_bits must be in [1, 32], got {headroom_bits}")
    if not 0 <= fraction_bits <= SLOT_BITS - headroom_bits - 2:
        raise ValueError(f"fraction_bits must be in [0, {SLOT_BITS - headroom_bits - 2}], got {fraction_bits}")
    slots = (public_key.n.bit_length() - 1) // SLOT_BITS if packed else 1
    if slots < 1:
        raise ValueError(f"the key is too small: n has {public_key.n.bit_length()} bits, need > {SLOT_BITS}")
    return Codec(fraction_bits, headroom_bits, slots)


def encrypted_sum(vectors: np.ndarray, public_key: paillier.PaillierPublicKey,
                  private_key: paillier.PaillierPrivateKey, *, fraction_bits: int = 16,
                  headroom_bits: int = 16, packed: bool = True) -> PaillierResult:
    """Sum of the clients' vectors [clients, d] computed on Paillier ciphertexts."""
    vectors = np.asarray(vectors, np.float64)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be [clients, d], got shape {vectors.shape}")
    n, d = vectors.shape
    codec = make_codec(public_key, fraction_bits=fraction_bits, headroom_bits=headroom_bits, packed=packed)
    if n > 2 ** headroom_bits:
        raise ValueError(f"headroom_bits={headroom_bits} sums at most {2 ** headroom_bits} clients, got {n}")
    quantized = [codec.quantize(v) for v in vectors]          # validate every input before any work

    start = time.perf_counter()
    ciphertexts = [[public_key.raw_encrypt(p) for p in codec.pack(q)] for q in quantized]
    encrypted = time.perf_counter()
    nsquare = public_key.nsquare
    summed = list(ciphertexts[0])
    for client in ciphertexts[1:]:
        summed = [a * b % nsquare for a, b in zip(summed, client)]
    added = time.perf_counter()
    total = codec.unpack([private_key.raw_decrypt(c) for c in summed], d, n)
    done = time.perf_counter()
    per_client = len(summed)
    cipher_bytes = (nsquare.bit_length() + 7) // 8
    return PaillierResult(total, per_client, n * per_client * cipher_bytes,
                          encrypted - start, added - encrypted, done - added)


def paillier_aggregator(*, key_bits: int = 2048, fraction_bits: int = 16, headroom_bits: int = 16,
                        packed: bool = True, keypair=None):
    """A host aggregate(updates, weights, key): the weighted mean computed on Paillier ciphertexts.

    Clients with weight w_k > 0 encrypt [w_k * update_k, w_k]; the server multiplies ciphertexts;
    the key holder (here: this aggregator, which made the keys) decrypts the two sums and divides.
    ``keypair``: (public, private) to reuse; else one ``key_bits`` pair is made now.
    Metrics: paillier_bytes, paillier_seconds, paillier_ciphertexts (per client).
    """
    if keypair is None:
        if not (isinstance(key_bits, int) and key_bits >= 512):
            raise ValueError(f"key_bits must be an int >= 512 (2048 for real use), got {key_bits!r}")
        keypair = paillier.generate_paillier_keypair(n_length=key_bits)
    public_key, private_key = keypair
    make_codec(public_key, fraction_bits=fraction_bits, headroom_bits=headroom_bits, packed=packed)

    @host_aggregator
    def aggregate(updates, weights, key):
        rows, leaves, treedef = weighted_rows(updates, weights)
        res = encrypted_sum(rows, public_key, private_key, fraction_bits=fraction_bits,
                            headroom_bits=headroom_bits, packed=packed)
        metrics = {"paillier_bytes": float(res.bytes_up),
                   "paillier_seconds": res.seconds_encrypt + res.seconds_sum + res.seconds_decrypt,
                   "paillier_ciphertexts": float(res.ciphertexts_per_client)}
        return unflatten_mean(res.total, leaves, treedef), metrics

    return aggregate


def encrypted(strategy, **kwargs):
    """``strategy`` with its weighted mean computed by ``paillier_aggregator(**kwargs)``."""
    return strategy._replace(name=f"paillier({strategy.name})", aggregate=paillier_aggregator(**kwargs))
