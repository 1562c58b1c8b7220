"""Entity alignment by ECDH private set intersection (PSI) on Curve25519.

Each party hashes its IDs onto the curve (SHA-512 of the ID, read as an X25519
u-coordinate) and blinds them with its secret scalar. Blinding commutes,
``a * (b * H(x)) == b * (a * H(x))``, so twice-blinded IDs can be compared while a single
blinded ID reveals nothing about ``x`` without the secret (the computational Diffie-Hellman
assumption; Meadows 1986, Huberman et al. 1999).

With a leader L and each other party P:

1. L -> P: ``a * H(x)`` for every ID of L, in a random order.
2. P -> L: ``b * (a * H(x))`` in the order received, and ``b * H(y)`` for its own IDs, shuffled.
3. L computes ``a * (b * H(y))`` and matches. After all parties, L keeps the IDs every party
   holds and sends each P the positions (in P's shuffled list) of the shared rows, in one
   agreed order. P learns which of its rows are shared, nothing about the others.

Security model: honest-but-curious parties. Each party learns the leader's set size; the
leader learns, for each other party, which of its own IDs that party holds; the others learn
only which of their rows are shared by everyone. All scalar multiplications are X25519 from
``cryptography``. Every message is recorded in
the returned transcript, so a test or a reader can inspect exactly what each party sent.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Mapping, NamedTuple

import numpy as np
import pandas as pd
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

_DOMAIN = b"fedlab-psi-v1|"


class Message(NamedTuple):
    """One message of a protocol: who sent what to whom. payload: list of bytes or an array."""

    sender: str
    receiver: str
    name: str
    payload: Any


class Alignment(NamedTuple):
    """Result of ``psi_align``.

    rows: party -> [num_shared] int positions (``iloc``) into that party's frame; row i of every
    party is the same entity. transcript: every message, in the order sent.
    """

    rows: dict
    num_shared: int
    transcript: tuple


def hash_id(value) -> bytes:
    """The 32-byte curve point for an ID: SHA-512 of its text form, read as a u-coordinate.

    IDs compare by ``str``: ``123`` (int) and ``"123"`` (str) are the same entity.
    """
    if isinstance(value, np.generic):
        value = value.item()
    return hashlib.sha512(_DOMAIN + str(value).encode("utf-8")).digest()[:32]


def _blind(secret: X25519PrivateKey, point: bytes) -> bytes:
    return secret.exchange(X25519PublicKey.from_public_bytes(point))


def _party_randomness(key, index: int):
    """(secret scalar, shuffle generator) of one party: OS randomness when key is None,
    otherwise derived from the jax key (reproducible demos and tests only)."""
    if key is None:
        return X25519PrivateKey.generate(), np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
    import jax

    bits = np.asarray(jax.random.bits(jax.random.fold_in(key, index), (12,), dtype=np.uint32))
    secret = X25519PrivateKey.from_private_bytes(bits[:8].astype("<u4").tobytes())
    return secret, np.random.default_rng(bits[8:].astype(np.uint64))


def _ids(frame, column, party) -> list:
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"frames[{party!r}] must be a pandas DataFrame, got {type(frame).__name__}")
    if column not in frame.columns:
        raise ValueError(f"frames[{party!r}] has no ID column {column!r} "
                         f"(columns: {list(frame.columns)[:10]})")
    ids = frame[column]
    if len(ids) == 0:
        raise ValueError(f"frames[{party!r}] is empty; every party needs at least one row")
    if ids.isna().any():
        raise ValueError(f"frames[{party!r}][{column!r}] has missing IDs; drop or fill them first")
    text = ids.map(lambda v: str(v.item() if isinstance(v, np.generic) else v))
    if text.duplicated().any():
        dup = text[text.duplicated()].iloc[0]
        raise ValueError(f"frames[{party!r}][{column!r}] has duplicate IDs (e.g. {dup!r}); "
                         "IDs must be unique")
    return list(ids)


def psi_align(frames: Mapping[str, pd.DataFrame], id_column, *, leader: str | None = None,
              key=None) -> Alignment:
    """Align parties' rows on their shared IDs without revealing the others (ECDH-PSI).

    frames: party name -> DataFrame (at least two); id_column: one column name for all parties,
    or a mapping party -> column name; leader: the party that runs the matching (default: the
    first). key: a ``jax.random`` key to derive the parties' secrets and shuffles reproducibly
    (demos and tests only); ``None`` (default) draws them from the operating system.
    Returns an ``Alignment``; the shared rows come in the leader's row order.
    """
    if not isinstance(frames, Mapping) or len(frames) < 2:
        raise ValueError("frames must map at least two party names to DataFrames")
    names = list(frames)
    leader = names[0] if leader is None else leader
    if leader not in frames:
        raise ValueError(f"leader must be one of {names}, got {leader!r}")
    columns = id_column if isinstance(id_column, Mapping) else {p: id_column for p in names}
    missing = [p for p in names if p not in columns]
    if missing:
        raise ValueError(f"id_column has no entry for parties {missing}")
    ids = {p: _ids(frames[p], columns[p], p) for p in names}

    transcript = []
    rand = {p: _party_randomness(key, i) for i, p in enumerate(names)}
    a, rng_leader = rand[leader]
    n_lead = len(ids[leader])
    order_lead = rng_leader.permutation(n_lead)           # position j of L's message = row order_lead[j]
    blinded_lead = [_blind(a, hash_id(ids[leader][r])) for r in order_lead]

    shared = np.ones(n_lead, bool)                        # over L's rows
    match = {}                        # party -> [n_lead] index into P's list, -1 if absent
    orders = {}
    for p in names:
        if p == leader:
            continue
        transcript.append(Message(leader, p, "blinded_ids", list(blinded_lead)))
        b, rng = rand[p]
        double_lead = [_blind(b, m) for m in blinded_lead]
        orders[p] = rng.permutation(len(ids[p]))
        blinded_p = [_blind(b, hash_id(ids[p][r])) for r in orders[p]]
        transcript.append(Message(p, leader, "double_blinded_ids", double_lead))
        transcript.append(Message(p, leader, "blinded_ids", blinded_p))
        lookup = {_blind(a, m): j for j, m in enumerate(blinded_p)}
        found = np.array([lookup.get(d, -1) for d in double_lead], np.int64)
        match[p] = np.full(n_lead, -1, np.int64)
        match[p][order_lead] = found
        shared &= match[p] >= 0
    num_shared = int(shared.sum())
    if num_shared == 0:
        raise ValueError(f"the parties {names} share no IDs; nothing to align")

    rows = {leader: np.flatnonzero(shared)}
    for p in orders:
        positions = match[p][rows[leader]]
        transcript.append(Message(leader, p, "aligned_positions", positions.copy()))
        rows[p] = orders[p][positions]
    return Alignment({p: rows[p] for p in names}, num_shared, tuple(transcript))


def align_frames(frames: Mapping[str, pd.DataFrame], alignment: Alignment) -> dict:
    """Each party's frame reordered to the aligned rows (index reset), as a new dict."""
    out = {}
    for p, frame in frames.items():
        if p not in alignment.rows:
            raise ValueError(f"alignment has no rows for party {p!r}")
        out[p] = frame.iloc[alignment.rows[p]].reset_index(drop=True)
    lengths = {p: len(f) for p, f in out.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"aligned frames must have equal row counts, got {lengths}")
    return out
