"""SecureBoost: vertically federated gradient-boosted trees (Cheng et al. 2019, as in FATE).

The guest holds the labels and some features; each host holds other features of the same
(aligned) rows. Per tree:

1. The guest computes gradients g and hessians h, turns them into fixed-point integers and
   encrypts them with Paillier (``phe``); with packing, one ciphertext carries both,
   ``g * 2^64 + h``.
2. Per tree level the guest tells the hosts which rows sit in which open node (the instance
   space, public in SecureBoost). Each host sums the ciphertexts into per-(node, feature,
   bin) histograms (homomorphic addition), accumulates them over bins, shuffles the split
   candidates and sends them under opaque ids, many sums per ciphertext (cipher
   compression). The host's features, bins and thresholds stay with the host.
3. The guest decrypts the candidate sums, scores every split with the XGBoost gain
   ``G_L^2/(H_L+lambda) + G_R^2/(H_R+lambda) - G^2/(H+lambda)`` (Chen & Guestrin 2016) and,
   for a winning host split, sends that host only the opaque id. The host records the
   (feature, threshold) under a new record id and returns the rows that go left.
4. Guest tree nodes of a host hold only (party, record id); at prediction each host
   answers "left or right" for its own records.

All sums are exact integer sums of the same fixed-point values, so training with
``encrypt=False`` (no cryptography) grows bit-identical trees; encryption only hides
g and h from the hosts.
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Sequence

import numpy as np

from fedlab.vertical.psi import Message

_PACK_BITS = 64      # low field of a packed plaintext: the hessian sum (< 2^62)
_SUM_BITS = 62       # every fixed-point sum stays below 2^62 in absolute value
_SPLIT_EPS = 1e-6    # a split must improve the loss by more than this (as XGBoost's kRtEps)


@dataclasses.dataclass(frozen=True)
class SecureBoostConfig:
    """Hyper-parameters of SecureBoost; checked on construction.

    objective: "binary" (logistic loss, labels 0/1) or "regression" (squared error).
    num_trees, max_depth, learning_rate, max_bin: as in XGBoost (``n_estimators``,
    ``max_depth``, ``learning_rate``, ``max_bin``); reg_lambda, min_child_weight likewise.
    base_score: initial prediction (probability for "binary"); None = mean label.
    encrypt: Paillier-encrypt gradients (False: same protocol in plaintext, for speed and
    for checking that encryption is lossless). packing: one ciphertext per row for (g, h).
    compress: hosts pack ~key_size / 128 candidate sums into one ciphertext before sending.
    key_size: Paillier modulus bits, >= 2048; smaller keys need ``insecure_test_key=True``.
    shuffle_candidates: hosts send split candidates in a random order (default). False sends
    them in (feature, bin) order, so ties between equally good splits break as in XGBoost;
    this tells the guest the order of a host's candidates (use it for testing).
    """

    objective: str = "binary"
    num_trees: int = 10
    max_depth: int = 3
    learning_rate: float = 0.3
    max_bin: int = 32
    reg_lambda: float = 1.0
    min_child_weight: float = 1.0
    base_score: float | None = None
    encrypt: bool = True
    packing: bool = True
    compress: bool = True
    key_size: int = 2048
    insecure_test_key: bool = False
    shuffle_candidates: bool = True

    def __post_init__(self):
        if self.objective not in ("binary", "regression"):
            raise ValueError(f"objective must be 'binary' or 'regression', got {self.objective!r}")
        for name, low in (("num_trees", 1), ("max_depth", 1), ("max_bin", 2)):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.max_bin > 65535:
            raise ValueError(f"max_bin must be <= 65535, got {self.max_bin}")
        if not 0 < self.learning_rate <= 1:
            raise ValueError(f"learning_rate must be in (0, 1], got {self.learning_rate}")
        if self.reg_lambda < 0 or self.min_child_weight < 0:
            raise ValueError(f"reg_lambda and min_child_weight must be >= 0, got "
                             f"{self.reg_lambda}, {self.min_child_weight}")
        if self.objective == "binary" and self.base_score is not None and not 0 < self.base_score < 1:
            raise ValueError(f"base_score must be a probability in (0, 1) for 'binary', "
                             f"got {self.base_score}")
        if self.encrypt:
            if not isinstance(self.key_size, int) or self.key_size < 512:
                raise ValueError(f"key_size must be an integer >= 2048 bits, got {self.key_size!r}")
            if self.key_size < 2048 and not self.insecure_test_key:
                raise ValueError(f"key_size must be >= 2048 bits for real use, got {self.key_size}; "
                                 "pass insecure_test_key=True to allow a small key in tests")


# ---------------------------------------------------------------- binning (each party, locally)

def quantile_cuts(x: np.ndarray, max_bin: int) -> list:
    """Per-feature split thresholds. x: [rows, features] -> list of sorted arrays.

    A feature with at most ``max_bin`` distinct values gets a cut at each value but the
    smallest (exact splits); otherwise cut k (k = 1 .. max_bin - 1) is the
    sorted value at rank ceil(k * rows / max_bin), close to XGBoost's ``hist`` sketch.
    Row i is in bin ``#(cuts <= x_i)``; a split at cut c sends x < c left.
    """
    cuts = []
    for column in np.asarray(x, np.float64).T:
        values = np.unique(column)
        if len(values) <= max_bin:
            cuts.append(values[1:])
        else:
            ordered = np.sort(column)
            ranks = np.minimum(np.ceil(np.arange(1, max_bin) * len(column) / max_bin), len(column) - 1)
            q = ordered[ranks.astype(np.int64)]
            cuts.append(np.unique(q[q > values[0]]))
    return cuts


def apply_bins(x: np.ndarray, cuts: list) -> np.ndarray:
    """Bin ids [rows, features] (uint16) of x under ``quantile_cuts``."""
    x = np.asarray(x, np.float64)
    bins = [np.searchsorted(c, x[:, f], side="right") for f, c in enumerate(cuts)]
    return np.stack(bins, 1).astype(np.uint16)


# ---------------------------------------------------------------- ciphers

class _Plain:
    """The protocol without cryptography: channels are exact int64 arrays."""

    def encrypt(self, g_q, h_q):
        return [g_q, h_q]

    def sum_sorted(self, channel, order, starts):
        return np.add.reduceat(channel[order], starts)

    def zeros(self, shape, channels):
        return [np.zeros(shape, np.int64) for _ in range(channels)]

    def compress(self, channels):
        return channels

    def decrypt(self, channels, count):
        return [np.asarray(c, np.int64) for c in channels]


class _Paillier:
    """Paillier via ``phe``. ``packing`` puts g and h into one plaintext g * 2^64 + h;
    ``compress`` lets a host put many candidate sums into one ciphertext (as FATE's cipher
    compression), so the guest decrypts ~key_size / 128 times less often."""

    def __init__(self, key_size, packing, compress):
        import phe

        self.phe = phe
        self.public_key, self.private_key = phe.generate_paillier_keypair(n_length=key_size)
        self.packing, self.compressing = packing, compress
        # a compressed field holds one signed sum plus an offset making it non-negative
        self.field = 2 * _PACK_BITS if packing else _PACK_BITS
        self.slots = max((self.public_key.n.bit_length() - 2) // self.field, 1)
        self.zero = phe.EncryptedNumber(self.public_key, 1, 0)   # Enc(0) with r = 1

    def _enc(self, values):
        pk, n = self.public_key, self.public_key.n
        out = np.empty(len(values), object)
        out[:] = [self.phe.EncryptedNumber(pk, pk.raw_encrypt(int(v) % n), 0) for v in values]
        return out

    def encrypt(self, g_q, h_q):
        if self.packing:
            packed = [(int(g) << _PACK_BITS) + int(h) for g, h in zip(g_q, h_q)]
            return [self._enc(packed)]
        return [self._enc(g_q), self._enc(h_q)]

    def sum_sorted(self, channel, order, starts):
        return np.add.reduceat(channel[order], starts)

    def zeros(self, shape, channels):
        out = []
        for _ in range(channels):
            z = np.empty(shape, object)
            z.fill(self.zero)
            out.append(z)
        return out

    def _dec(self, channel):
        n, half = self.public_key.n, self.public_key.n // 2
        raw = [self.private_key.raw_decrypt(c.ciphertext(be_secure=False)) for c in channel]
        return [r - n if r > half else r for r in raw]

    def compress(self, channels):
        """Host side: Enc(s_1), ..., Enc(s_k) -> Enc(sum_i (s_i + offset) * 2^(field * (k - i)))
        for each group of ``slots`` sums (Horner's rule: scalar multiplication by 2^field and
        homomorphic addition; no decryption key needed)."""
        if not self.compressing:
            return channels
        offset, shift = 1 << (self.field - 1), 1 << self.field
        out = []
        for channel in channels:
            groups = []
            for start in range(0, len(channel), self.slots):
                acc = None
                for c in channel[start:start + self.slots]:
                    acc = c + offset if acc is None else acc * shift + (c + offset)
                groups.append(acc)
            arr = np.empty(len(groups), object)
            arr[:] = groups
            out.append(arr)
        return out

    def _uncompress(self, channel, count):
        offset, mask = 1 << (self.field - 1), (1 << self.field) - 1
        values = []
        for start, c in zip(range(0, count, self.slots), channel):
            k = min(self.slots, count - start)
            raw = self.private_key.raw_decrypt(c.ciphertext(be_secure=False))
            values += [((raw >> (self.field * (k - 1 - i))) & mask) - offset for i in range(k)]
        return values

    def decrypt(self, channels, count):
        decode = (lambda c: self._uncompress(c, count)) if self.compressing else self._dec
        if self.packing:
            mask = (1 << _PACK_BITS) - 1
            values = decode(channels[0])
            return [np.array([v >> _PACK_BITS for v in values], np.int64),
                    np.array([v & mask for v in values], np.int64)]
        return [np.array(decode(c), np.int64) for c in channels]


# ---------------------------------------------------------------- histograms

def _candidate_sums(cipher, channels, bins, node_of, num_nodes, num_cuts):
    """Left-side sums of each channel for every split candidate of every open node.

    bins: [rows, features]; node_of: [rows] open-node slot or -1; num_cuts: [features].
    Returns (slot, feature, bin) int arrays and the per-channel sums of the kept candidates:
    both sides non-empty, and the bin itself non-empty (an empty bin repeats the previous
    candidate's split). Vectorised: one sort and one ``reduceat`` for all nodes and features.
    """
    rows = np.flatnonzero(node_of >= 0)
    num_features = bins.shape[1]
    width = int(max(num_cuts.max(), 0)) + 1
    flat = ((node_of[rows, None] * num_features + np.arange(num_features)) * width + bins[rows]).ravel()
    order = np.argsort(flat, kind="stable")
    keys, starts = np.unique(flat[order], return_index=True)
    row_of = np.repeat(rows, num_features)
    shape = (num_nodes, num_features, width)
    counts = np.zeros(num_nodes * num_features * width, np.int64)
    counts[keys] = np.diff(np.append(starts, len(flat)))
    hist = cipher.zeros(num_nodes * num_features * width, len(channels))
    for h, channel in zip(hist, channels):
        h[keys] = cipher.sum_sorted(channel[row_of], order, starts)
    counts = counts.reshape(shape)
    left_counts = np.cumsum(counts, axis=2)
    totals = left_counts[:, :, -1:]
    valid = (np.arange(width) < num_cuts[:, None])[None] & (counts > 0) & (left_counts < totals)
    slot, feature, b = np.nonzero(valid)
    sums = [np.add.accumulate(h.reshape(shape), axis=2)[slot, feature, b] for h in hist]
    return slot, feature, b, sums


def _host_offer(cipher, encrypted, bins, slot_rows, num_slots, num_cuts, rng):
    """A host's answer for one level: its split candidates' encrypted left sums, in a random
    order (``rng``; None keeps (feature, bin) order) under opaque ids 0, 1, ...

    Returns (offer sent to the guest, private table [candidates, 2]: opaque id -> (feature, bin)).
    """
    slot, feature, b, sums = _candidate_sums(cipher, encrypted, bins, slot_rows, num_slots, num_cuts)
    perm = rng.permutation(len(slot)) if rng is not None else np.arange(len(slot))
    offer = {"slot": slot[perm], "opaque_id": np.arange(len(slot)),
             "sums": cipher.compress([c[perm] for c in sums])}
    return offer, np.stack([feature[perm], b[perm]], 1)


def _split_gains(GL_q, HL_q, G_q, H_q, scale, lam, min_child_weight):
    """XGBoost's split gain from fixed-point sums (left side and node totals, per candidate);
    -inf where a child's hessian sum is below ``min_child_weight``."""
    GL, HL = GL_q.astype(np.float64) / scale, HL_q.astype(np.float64) / scale
    G, H = G_q.astype(np.float64) / scale, H_q.astype(np.float64) / scale
    GR, HR = G - GL, H - HL
    gain = GL ** 2 / (HL + lam) + GR ** 2 / (HR + lam) - G ** 2 / (H + lam)
    return np.where((HL >= min_child_weight) & (HR >= min_child_weight), gain, -np.inf)


# ---------------------------------------------------------------- the parties' models

class Tree(NamedTuple):
    """One tree as flat node arrays [nodes], held by the guest.

    party: -1 leaf, 0 guest, k >= 1 host k - 1; feature: guest feature index or the host's
    opaque record id; threshold: guest threshold (NaN for host splits: the guest never
    learns it); left/right: child node ids; value: leaf output (learning rate applied).
    """

    party: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray


@dataclasses.dataclass
class HostModel:
    """What a host keeps private: its bin cuts and, per record id, (feature, threshold)."""

    cuts: list
    records: list = dataclasses.field(default_factory=list)

    def decisions(self, x: np.ndarray) -> np.ndarray:
        """Its answer at prediction: [records, rows] bool, True = row goes left (x_f < threshold)."""
        x = np.asarray(x, np.float64)
        if not self.records:
            return np.zeros((0, len(x)), bool)
        return np.stack([x[:, f] < t for f, t in self.records])


class SecureBoostModel(NamedTuple):
    """A trained SecureBoost model. trees and base_margin are the guest's; hosts[k] is host k's
    private part; transcript: every message the protocol sent (``Message``)."""

    config: SecureBoostConfig
    base_margin: float
    trees: tuple
    hosts: tuple
    transcript: tuple


# ---------------------------------------------------------------- training

def _check_inputs(guest_x, y, host_xs, objective):
    guest_x = np.asarray(guest_x, np.float64)
    if guest_x.ndim != 2 or guest_x.shape[1] == 0:
        raise ValueError(f"guest_x must be [rows, features] with >= 1 feature, got shape {guest_x.shape}")
    if not host_xs:
        raise ValueError("host_xs must hold at least one host's features")
    y = np.asarray(y, np.float64)
    if y.ndim != 1 or len(y) != len(guest_x):
        raise ValueError(f"y must be [rows] with rows = guest_x rows ({len(guest_x)}), got shape {y.shape}")
    if objective == "binary" and not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("y must hold only 0 and 1 for objective='binary'")
    hosts = []
    for k, x in enumerate(host_xs):
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or x.shape[1] == 0:
            raise ValueError(f"host_xs[{k}] must be [rows, features] with >= 1 feature, got shape {x.shape}")
        if x.shape[0] != len(y):
            raise ValueError(f"host_xs[{k}] has {x.shape[0]} rows but the guest has {len(y)}; "
                             "align the parties first (psi_align)")
        hosts.append(x)
    for name, x in [("guest_x", guest_x)] + [(f"host_xs[{k}]", x) for k, x in enumerate(hosts)]:
        if not np.isfinite(x).all():
            raise ValueError(f"{name} has NaN or infinite values; impute them first")
    if not np.isfinite(y).all():
        raise ValueError("y has NaN or infinite values")
    return guest_x, y, hosts


def _gradients(objective, y, margin):
    if objective == "binary":
        p = 1.0 / (1.0 + np.exp(-margin))
        return p - y, np.maximum(p * (1.0 - p), 1e-16)
    return margin - y, np.ones_like(y)


def _quantize(g, h):
    """Fixed-point ints with one power-of-two scale so that every sum stays below 2^62."""
    peak = max(float(np.abs(g).max()), float(h.max()), 1e-300) * len(g)
    scale = 2.0 ** (_SUM_BITS - 1 - math.ceil(math.log2(peak)))
    return np.rint(g * scale).astype(np.int64), np.rint(h * scale).astype(np.int64), scale


def _seed(key, index):
    import jax

    return np.random.default_rng(np.asarray(jax.random.bits(jax.random.fold_in(key, index), (4,), np.uint32)))


def fit_secureboost(guest_x, y, host_xs: Sequence, config: SecureBoostConfig, *, key) -> SecureBoostModel:
    """Train SecureBoost. guest_x: [rows, guest features]; y: [rows]; host_xs: per host
    [rows, host features], rows aligned with the guest's (see ``psi_align``).

    key: ``jax.random`` key for the hosts' candidate shuffles (the Paillier key pair comes
    from the operating system). Returns a ``SecureBoostModel``.
    """
    guest_x, y, host_data = _check_inputs(guest_x, y, host_xs, config.objective)
    n = len(y)
    lam, mcw = config.reg_lambda, config.min_child_weight
    cipher = _Paillier(config.key_size, config.packing, config.compress) if config.encrypt else _Plain()
    transcript = []
    send = lambda s, r, name, payload: transcript.append(Message(s, r, name, payload))
    host_names = [f"host{k}" for k in range(len(host_data))]

    # each party bins its own features; nothing about them is sent
    guest_cuts = quantile_cuts(guest_x, config.max_bin)
    guest_bins = apply_bins(guest_x, guest_cuts)
    guest_num_cuts = np.array([len(c) for c in guest_cuts], np.int64)
    hosts = [HostModel(quantile_cuts(x, config.max_bin)) for x in host_data]
    host_bins = [apply_bins(x, m.cuts) for x, m in zip(host_data, hosts)]
    host_num_cuts = [np.array([len(c) for c in m.cuts], np.int64) for m in hosts]
    host_rngs = [_seed(key, k) for k in range(len(hosts))]

    if config.base_score is not None:
        base = config.base_score
    else:
        base = float(np.clip(y.mean(), 1e-6, 1 - 1e-6)) if config.objective == "binary" else float(y.mean())
    base_margin = math.log(base / (1 - base)) if config.objective == "binary" else base
    margin = np.full(n, base_margin)
    trees = []
    for t in range(config.num_trees):
        g, h = _gradients(config.objective, y, margin)
        g_q, h_q, scale = _quantize(g, h)
        encrypted = cipher.encrypt(g_q, h_q)
        for name in host_names:
            send("guest", name, f"tree{t}/gradients", encrypted)
        # node arrays, grown level by level; node_of[i] = node id of row i
        party, feature, threshold, left, right, value = [-1], [-1], [np.nan], [-1], [-1], [0.0]
        node_of = np.zeros(n, np.int64)
        open_nodes = [0]
        for depth in range(config.max_depth):
            if not open_nodes:
                break
            slot_of_node = {node: s for s, node in enumerate(open_nodes)}
            slot_rows = np.full(n, -1, np.int64)
            in_open = np.isin(node_of, open_nodes)
            slot_rows[in_open] = [slot_of_node[v] for v in node_of[in_open]]
            G_q = np.array([int(g_q[slot_rows == s].sum()) for s in range(len(open_nodes))], np.int64)
            H_q = np.array([int(h_q[slot_rows == s].sum()) for s in range(len(open_nodes))], np.int64)
            # candidates: guest's own (plaintext), then each host's (encrypted, shuffled, opaque)
            cand = []   # (party, slot, G_L int, H_L int, private handle)
            s, f, b, (gl, hl) = _candidate_sums(_Plain(), [g_q, h_q], guest_bins, slot_rows,
                                                len(open_nodes), guest_num_cuts)
            cand.append((np.zeros(len(s), np.int64), s, gl, hl, np.stack([f, b], 1)))
            private = []
            for k, name in enumerate(host_names):
                send("guest", name, f"tree{t}/depth{depth}/instance_space", slot_rows.copy())
                rng = host_rngs[k] if config.shuffle_candidates else None
                offer, table = _host_offer(cipher, encrypted, host_bins[k], slot_rows, len(open_nodes),
                                           host_num_cuts[k], rng)
                private.append(table)
                send(name, "guest", f"tree{t}/depth{depth}/split_candidates", offer)
                gl_k, hl_k = cipher.decrypt(offer["sums"], len(table))
                cand.append((np.full(len(table), k + 1, np.int64), offer["slot"], gl_k, hl_k,
                             offer["opaque_id"]))
            c_party = np.concatenate([c[0] for c in cand])
            c_slot = np.concatenate([c[1] for c in cand]).astype(np.int64)
            c_index = np.concatenate([np.arange(len(c[0])) for c in cand])
            gain = _split_gains(np.concatenate([c[2] for c in cand]), np.concatenate([c[3] for c in cand]),
                                G_q[c_slot], H_q[c_slot], scale, lam, mcw)
            next_open = []
            for slot, node in enumerate(open_nodes):
                mine = np.flatnonzero(c_slot == slot)
                if len(mine) == 0 or not gain[mine].max() > _SPLIT_EPS:
                    continue
                best = mine[np.argmax(gain[mine])]
                who, j = int(c_party[best]), int(c_index[best])
                rows = np.flatnonzero(node_of == node)
                if who == 0:
                    fi, bi = cand[0][4][j]
                    goes_left = guest_bins[rows, fi] <= bi
                    party[node], feature[node], threshold[node] = 0, int(fi), float(guest_cuts[fi][bi])
                else:
                    k = who - 1
                    opaque = int(cand[who][4][j])
                    send("guest", host_names[k], f"tree{t}/depth{depth}/chosen_split",
                         {"node": node, "opaque_id": opaque})
                    fi, bi = private[k][opaque]
                    hosts[k].records.append((int(fi), float(hosts[k].cuts[fi][bi])))
                    goes_left = host_bins[k][rows, fi] <= bi
                    send(host_names[k], "guest", f"tree{t}/depth{depth}/split_rows",
                         {"record_id": len(hosts[k].records) - 1, "goes_left": goes_left.copy()})
                    party[node], feature[node], threshold[node] = who, len(hosts[k].records) - 1, np.nan
                ids = len(party)
                left[node], right[node] = ids, ids + 1
                for _ in range(2):
                    party.append(-1), feature.append(-1), threshold.append(np.nan)
                    left.append(-1), right.append(-1), value.append(0.0)
                node_of[rows[goes_left]], node_of[rows[~goes_left]] = ids, ids + 1
                next_open += [ids, ids + 1]
            open_nodes = next_open
        # leaf values from the guest's own float gradients
        leaves = np.array(party) == -1
        g_sum = np.bincount(node_of, weights=g, minlength=len(party))
        h_sum = np.bincount(node_of, weights=h, minlength=len(party))
        value = np.where(leaves, -g_sum / (h_sum + lam) * config.learning_rate, 0.0)
        tree = Tree(np.array(party), np.array(feature), np.array(threshold), np.array(left),
                    np.array(right), value)
        trees.append(tree)
        margin = margin + value[node_of]
    return SecureBoostModel(config, base_margin, tuple(trees), tuple(hosts), tuple(transcript))


def predict_margin(model: SecureBoostModel, guest_x, host_xs: Sequence) -> np.ndarray:
    """Raw scores [rows]: the guest routes rows through its trees; each host answers only
    for its own records (``HostModel.decisions``)."""
    guest_x = np.asarray(guest_x, np.float64)
    if len(host_xs) != len(model.hosts):
        raise ValueError(f"host_xs must hold {len(model.hosts)} hosts' features, got {len(host_xs)}")
    n = len(guest_x)
    for k, x in enumerate(host_xs):
        if len(x) != n:
            raise ValueError(f"host_xs[{k}] has {len(x)} rows but guest_x has {n}; align the parties first")
    answers = [m.decisions(x) for m, x in zip(model.hosts, host_xs)]
    margin = np.full(n, model.base_margin)
    rows = np.arange(n)
    for tree in model.trees:
        node = np.zeros(n, np.int64)
        for _ in range(model.config.max_depth):
            p = tree.party[node]
            go_left = np.zeros(n, bool)
            is_guest = p == 0
            at = node[is_guest]
            go_left[is_guest] = guest_x[rows[is_guest], tree.feature[at]] < tree.threshold[at]
            for k, a in enumerate(answers):
                mine = p == k + 1
                go_left[mine] = a[tree.feature[node[mine]], rows[mine]]
            node = np.where(p == -1, node, np.where(go_left, tree.left[node], tree.right[node]))
        margin += tree.value[node]
    return margin


def predict_secureboost(model: SecureBoostModel, guest_x, host_xs: Sequence) -> np.ndarray:
    """Predictions [rows]: probabilities of class 1 for "binary", values for "regression"."""
    margin = predict_margin(model, guest_x, host_xs)
    return 1.0 / (1.0 + np.exp(-margin)) if model.config.objective == "binary" else margin
