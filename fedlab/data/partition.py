"""Split a centralized dataset into clients: IID and the standard heterogeneity settings.

A partitioner maps ``(central, num_clients, key, **knobs)`` to a :class:`Partition`: one
array of row indices per client. Every row lands in exactly one client (nothing lost or
duplicated), and the same key gives the same partition. :func:`federate` then splits each
client's rows into train and test and packs them into a :class:`FederatedDataset`.

Partition specs (the CLI's ``--partition``): ``iid``, ``dirichlet:ALPHA[,MIN_SIZE]``,
``shards[:PER_CLIENT]``, ``quantity:EXPONENT[,MIN_SIZE]``, ``quantity_dirichlet:BETA[,MIN_SIZE]``,
``feature_shift:SIGMA``, ``natural``, ``column:COL``. References: Dirichlet label skew and
feature noise follow NIID-Bench (Li et al., "Federated Learning on Non-IID Data Silos",
ICDE 2022); shards follow FedAvg (McMahan et al., AISTATS 2017).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import pandas as pd

from fedlab.core.registry import PARTITIONS, parse_spec, register_partition
from fedlab.data import _random
from fedlab.data.federated import FederatedDataset, _offsets


@dataclasses.dataclass(frozen=True, eq=False)
class CentralDataset:
    """A dataset before federation: all rows in one place.

    x: [N, *input_shape] float32; y: [N] int32 class ids (float32 targets when
    ``num_classes == 0``); columns: the raw table (N rows) that ``column:COL`` partitions by,
    or None; client_ids: [N] int natural client of each row (indices into client_names), or
    None; weights: [N] float32 example weights for the training loss, or None.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    num_classes: int
    feature_names: tuple[str, ...] | None = None
    columns: pd.DataFrame | None = None
    client_ids: np.ndarray | None = None
    client_names: tuple[str, ...] | None = None
    weights: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None
    target: str | None = None
    target_scale: tuple[float, float] | None = None      # regression: (mean, std) of the raw target
    encoding: dict | None = None      # from_dataframe's arguments, to re-encode ``columns`` (quality)

    def __post_init__(self):
        n = len(self.y)
        if len(self.x) != n:
            raise ValueError(f"x has {len(self.x)} rows but y has {n}")
        for field in ("columns", "client_ids", "weights"):
            value = getattr(self, field)
            if value is not None and len(value) != n:
                raise ValueError(f"{field} has {len(value)} rows but y has {n}")
        if not np.all(np.isfinite(self.x)):
            raise ValueError("x contains NaN or infinite values; impute them first")
        if self.num_classes > 0 and n and (self.y.min() < 0 or self.y.max() >= self.num_classes):
            raise ValueError(f"y labels must lie in [0, {self.num_classes})")

    @property
    def num_examples(self) -> int:
        return len(self.y)


class Partition(NamedTuple):
    """Which rows of a CentralDataset each client owns.

    client_indices: one int64 array of row indices per client (sorted, disjoint, covering
    every row); client_names: a name per client or None; feature_noise: [num_clients] std of
    the Gaussian noise each client adds to its features (feature shift), or None.
    """

    client_indices: tuple[np.ndarray, ...]
    client_names: tuple[str, ...] | None = None
    feature_noise: np.ndarray | None = None


# ---- helpers -----------------------------------------------------------------------------
def _groups(client_of_row: np.ndarray, num_clients: int) -> tuple[np.ndarray, ...]:
    """Row indices of each client, given each row's client id (vectorised)."""
    order = np.argsort(client_of_row, kind="stable")
    counts = np.bincount(client_of_row, minlength=num_clients)
    return tuple(np.split(order.astype(np.int64), np.cumsum(counts)[:-1]))


def _check_num_clients(num_clients, n: int, low_per_client: int = 1) -> int:
    high = n // low_per_client
    if (not isinstance(num_clients, (int, np.integer)) or isinstance(num_clients, bool)
            or not 1 <= num_clients <= high):
        raise ValueError(f"num_clients: must be between 1 and {high}, got {num_clients}")
    return int(num_clients)


def _check_classes(central: CentralDataset, name: str) -> None:
    if central.num_classes == 0:
        raise ValueError(f"partition: {name} needs class labels; {central.name!r} is a regression "
                         "dataset (use iid, quantity or feature_shift)")


def _largest_remainder(total: int, shares: np.ndarray) -> np.ndarray:
    """Integers summing to ``total``, proportional to ``shares`` (largest-remainder rounding)."""
    quota = total * shares / shares.sum()
    counts = np.floor(quota).astype(np.int64)
    left = total - counts.sum()
    counts[np.argsort(-(quota - counts), kind="stable")[:left]] += 1
    return counts


def _shuffle_within(group: np.ndarray, key) -> np.ndarray:
    """Row order that groups rows by ``group`` (ascending), in random order inside each group."""
    return np.argsort(group + _random.uniform(key, len(group)), kind="stable")


def _split_by_sizes(key, n: int, sizes: np.ndarray) -> tuple[np.ndarray, ...]:
    """A random permutation of range(n) cut into consecutive pieces of the given sizes."""
    perm = _random.permutation(key, n)
    return tuple(np.sort(p) for p in np.split(perm, np.cumsum(sizes)[:-1]))


def _enforce_min_size(client_of_row: np.ndarray, num_clients: int, min_size: int, key) -> np.ndarray:
    """Move rows from the largest clients to those under ``min_size`` (deterministic).

    Each donor keeps a random ``min_size`` of its rows; its other rows are spare. Spare rows
    are handed out largest donor first, in contiguous blocks, so a receiving client gets its
    rows from as few donors as possible (keeping the label skew of the original draw).
    """
    sizes = np.bincount(client_of_row, minlength=num_clients)
    deficit = np.maximum(min_size - sizes, 0)
    if deficit.sum() == 0:
        return client_of_row
    order = _shuffle_within(client_of_row, key)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order)) - np.repeat(_offsets(sizes)[:-1], sizes)
    spare = np.flatnonzero(rank >= min_size)
    donor_order = np.argsort(-sizes, kind="stable")
    donor_rank = np.empty(num_clients, np.int64)
    donor_rank[donor_order] = np.arange(num_clients)
    n = len(client_of_row)
    spare = spare[np.argsort(donor_rank[client_of_row[spare]] * n + (n - rank[spare]), kind="stable")]
    moved = spare[:deficit.sum()]
    out = client_of_row.copy()
    out[moved] = np.repeat(np.arange(num_clients), deficit)
    return out


def _check_number(value, what: str, low: float, strict: bool) -> float:
    """``value`` as a float, or ValueError '<what> must be > low, got value'."""
    is_number = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    if not (is_number and np.isfinite(value) and (value > low if strict else value >= low)):
        shown = f"{value:g}" if is_number else repr(value)
        raise ValueError(f"{what} must be {'>' if strict else '>='} {low:g}, got {shown}")
    return float(value)


def _min_size(min_size, n: int, num_clients: int, name: str) -> int:
    if not isinstance(min_size, (int, np.integer)) or isinstance(min_size, bool) or min_size < 0:
        raise ValueError(f"partition: {name} min_size must be an integer >= 0, got {min_size}")
    return int(min(min_size, n // num_clients))


# ---- partitioners --------------------------------------------------------------------------
@register_partition("iid")
def partition_iid(central: CentralDataset, num_clients: int, key) -> Partition:
    """IID: a random permutation of the rows cut into near-equal pieces."""
    n = central.num_examples
    num_clients = _check_num_clients(num_clients, n)
    sizes = np.full(num_clients, n // num_clients) + (np.arange(num_clients) < n % num_clients)
    return Partition(_split_by_sizes(key, n, sizes))


@register_partition("dirichlet")
def partition_dirichlet(central: CentralDataset, num_clients: int, key, *, alpha: float = 0.5,
                        min_size: int = 10) -> Partition:
    """Label skew: each class's rows are split across clients by p_c ~ Dirichlet(alpha * 1).

    Small alpha gives each client few classes; large alpha approaches IID. Clients left
    with fewer than min(min_size, N // num_clients) rows are topped up from the largest
    clients by a deterministic fix-up (instead of redrawing until it happens to hold).
    """
    alpha = _check_number(alpha, "partition: dirichlet alpha", 0, strict=True)
    _check_classes(central, "dirichlet")
    n = central.num_examples
    num_clients = _check_num_clients(num_clients, n)
    min_size = _min_size(min_size, n, num_clients, "dirichlet")
    y = central.y
    props = _random.dirichlet(_random.subkey(key, 0), alpha, central.num_classes, num_clients)
    order = _shuffle_within(y, _random.subkey(key, 1))          # rows by class, random within
    class_sizes = np.bincount(y, minlength=central.num_classes)
    starts = _offsets(class_sizes)
    client_of_row = np.empty(n, np.int64)
    for c in np.flatnonzero(class_sizes):                       # loop over classes, not rows
        bounds = np.floor(np.cumsum(props[c]) * class_sizes[c]).astype(np.int64)
        bounds[-1] = class_sizes[c]
        rank = np.arange(class_sizes[c])
        client_of_row[order[starts[c]:starts[c + 1]]] = np.searchsorted(bounds, rank, side="right")
    client_of_row = _enforce_min_size(client_of_row, num_clients, min_size, _random.subkey(key, 2))
    return Partition(_groups(client_of_row, num_clients))


@register_partition("shards")
def partition_shards(central: CentralDataset, num_clients: int, key, *,
                     shards_per_client: int = 2) -> Partition:
    """Pathological label skew (FedAvg): rows sorted by label, cut into shards, a few per client.

    Shards never straddle two labels (each class is cut into its own shards, their number
    proportional to the class size), so a client holds at most ``shards_per_client`` labels.
    """
    if (not isinstance(shards_per_client, (int, np.integer)) or isinstance(shards_per_client, bool)
            or shards_per_client < 1):
        raise ValueError(f"partition: shards per client must be an integer >= 1, got {shards_per_client}")
    _check_classes(central, "shards")
    n = central.num_examples
    num_clients = _check_num_clients(num_clients, n, shards_per_client)
    y = central.y
    class_sizes = np.bincount(y, minlength=central.num_classes)
    present = np.flatnonzero(class_sizes)
    total = num_clients * shards_per_client
    if total < len(present):
        raise ValueError(f"num_clients: shards needs num_clients * shards_per_client >= "
                         f"{len(present)} (the number of classes), got {num_clients} * {shards_per_client}")
    shards = np.zeros(central.num_classes, np.int64)
    shards[present] = 1 + _largest_remainder(total - len(present), class_sizes[present].astype(float))
    while np.any(shards > class_sizes):                          # a tiny class got too many
        c = int(np.argmax(shards - class_sizes))
        shards[c] -= 1
        room = np.where(shards < class_sizes, class_sizes / np.maximum(shards, 1), -1.0)
        shards[int(np.argmax(room))] += 1
    order = _shuffle_within(y, _random.subkey(key, 0))
    starts = _offsets(class_sizes)
    rank = np.arange(n) - np.repeat(starts[:-1], class_sizes)  # rank of order[i] in its class
    y_sorted = y[order]
    shard_of_sorted = _offsets(shards)[y_sorted] + rank * shards[y_sorted] // class_sizes[y_sorted]
    client_of_shard = np.empty(total, np.int64)
    client_of_shard[_random.permutation(_random.subkey(key, 1), total)] = (
        np.arange(total) // shards_per_client)
    client_of_row = np.empty(n, np.int64)
    client_of_row[order] = client_of_shard[shard_of_sorted]
    return Partition(_groups(client_of_row, num_clients))


def _sized_partition(central, num_clients, key, shares_fn, min_size, name) -> Partition:
    n = central.num_examples
    num_clients = _check_num_clients(num_clients, n)
    min_size = _min_size(min_size, n, num_clients, name)
    shares = shares_fn(_random.subkey(key, 0), num_clients)
    sizes = min_size + _largest_remainder(n - min_size * num_clients, shares)
    return Partition(_split_by_sizes(_random.subkey(key, 1), n, sizes))


@register_partition("quantity")
def partition_quantity(central: CentralDataset, num_clients: int, key, *, exponent: float = 1.5,
                       min_size: int = 10) -> Partition:
    """Quantity skew by a power law; labels stay IID.

    The client of size rank r holds min_size + c * r**-exponent rows (ranks given to clients
    at random, c so that the sizes add up to N).
    """
    exponent = _check_number(exponent, "partition: quantity exponent", 0, strict=False)

    def shares(k, m):
        return (_random.permutation(k, m) + 1.0) ** -exponent

    return _sized_partition(central, num_clients, key, shares, min_size, "quantity")


@register_partition("quantity_dirichlet")
def partition_quantity_dirichlet(central: CentralDataset, num_clients: int, key, *,
                                 beta: float = 0.5, min_size: int = 10) -> Partition:
    """Quantity skew by Dirichlet shares (NIID-Bench); labels stay IID.

    Client k holds min_size + q_k * (N - num_clients * min_size) rows, q ~ Dirichlet(beta * 1).
    """
    beta = _check_number(beta, "partition: quantity_dirichlet beta", 0, strict=True)

    def shares(k, m):
        return _random.dirichlet(k, beta, 1, m)[0]

    return _sized_partition(central, num_clients, key, shares, min_size, "quantity_dirichlet")


@register_partition("feature_shift")
def partition_feature_shift(central: CentralDataset, num_clients: int, key, *,
                            sigma: float = 0.1) -> Partition:
    """Feature skew by noise (NIID-Bench): an IID split, then per-client Gaussian feature noise.

    Client k adds noise of std sigma * k / (num_clients - 1) to its features (train and
    test): client 0 is clean, the last one gets std sigma.
    """
    sigma = _check_number(sigma, "partition: feature_shift sigma", 0, strict=False)
    part = partition_iid(central, num_clients, key)
    k = len(part.client_indices)
    noise = sigma * np.arange(k) / max(k - 1, 1)
    return Partition(part.client_indices, None, noise)


def _check_implied(num_clients, implied: int, what: str) -> None:
    if num_clients is not None and num_clients != implied:
        raise ValueError(f"num_clients: {what} has {implied} clients, got {num_clients} "
                         "(omit num_clients or pass that number)")


@register_partition("natural")
def partition_natural(central: CentralDataset, num_clients: int | None, key) -> Partition:
    """The dataset's own clients (e.g. the generator's devices, the state of a loan)."""
    if central.client_ids is None:
        raise ValueError(f"partition: natural needs a dataset with its own clients; {central.name!r} "
                         "has none (use iid, dirichlet:ALPHA, shards, quantity:EXP or column:COL)")
    ids, client_of_row = np.unique(central.client_ids, return_inverse=True)
    _check_implied(num_clients, len(ids), f"the natural partition of {central.name!r}")
    names = tuple(central.client_names[i] for i in ids) if central.client_names else None
    return Partition(_groups(client_of_row.astype(np.int64), len(ids)), names)


@register_partition("column")
def partition_column(central: CentralDataset, num_clients: int | None, key, *,
                     column: str = "") -> Partition:
    """Each value of a raw column becomes a client (missing values form a client '<missing>')."""
    if central.columns is None:
        raise ValueError(f"partition: column:COL needs a dataset with named columns; "
                         f"{central.name!r} has none")
    if column not in central.columns.columns:
        raise ValueError(f"partition: column {column!r} not in {list(central.columns.columns)}")
    codes, values = pd.factorize(central.columns[column], sort=True)
    names = [str(v) for v in values]
    if np.any(codes < 0):
        codes = np.where(codes < 0, len(values), codes)
        names.append("<missing>")
    _check_implied(num_clients, len(names), f"column {column!r}")
    return Partition(_groups(codes.astype(np.int64), len(names)), tuple(names))


# ---- specs and federation ---------------------------------------------------------------
def make_partition(central: CentralDataset, spec: str, num_clients: int | None, key) -> Partition:
    """Run the partitioner named by ``spec`` (e.g. 'dirichlet:0.5') on ``central``."""
    entry, knobs = parse_spec(spec, PARTITIONS, "partition")
    return entry.factory(central, num_clients, key, **knobs)


def split_rows(part: Partition, key, test_fraction: float):
    """(rows, client, is_test, sizes, n_test): every row of the partition, shuffled within its
    client, the client of each, whether it is a test row; client sizes and test rows per client.
    ``key`` is federate's key (the split uses its stage 1)."""
    rows = np.concatenate(part.client_indices)
    sizes = np.array([len(i) for i in part.client_indices], np.int64)
    client = np.repeat(np.arange(len(sizes)), sizes)
    order = _shuffle_within(client, _random.subkey(key, 1))
    rows, client = rows[order], client[order]                   # shuffled within each client
    rank = np.arange(len(rows)) - np.repeat(_offsets(sizes)[:-1], sizes)
    n_test = np.minimum(np.floor(sizes * test_fraction + 0.5).astype(np.int64), sizes - 1)
    return rows, client, rank < n_test[client], sizes, n_test


def federate(central: CentralDataset, partition_spec: str, num_clients: int | None, key,
             test_fraction: float = 0.2) -> FederatedDataset:
    """Partition ``central`` into clients and split each client's rows into train and test.

    Client k keeps round(n_k * test_fraction) random rows for testing (at most n_k - 1, so
    every client trains on something). Feature noise of ``feature_shift`` is added to both
    splits of a client; example weights go to ``train_weights``.
    """
    if (not isinstance(test_fraction, (int, float)) or isinstance(test_fraction, bool)
            or not 0 <= test_fraction < 1):
        raise ValueError(f"test_fraction: must be in [0, 1), got {test_fraction}")
    part = make_partition(central, partition_spec, num_clients, _random.subkey(key, 0))
    rows, client, is_test, sizes, n_test = split_rows(part, key, test_fraction)
    x = central.x[rows]
    if part.feature_noise is not None and np.any(part.feature_noise > 0):
        noise = _random.normal(_random.subkey(key, 2), x.shape)
        std = part.feature_noise[client].reshape((-1,) + (1,) * (x.ndim - 1))
        x = (x + std * noise).astype(np.float32)
    tr, te = ~is_test, is_test
    weights = None if central.weights is None else central.weights[rows[tr]].astype(np.float32)
    return FederatedDataset(
        name=f"{central.name}/{partition_spec}",
        x_train=x[tr], y_train=central.y[rows[tr]], train_offsets=_offsets(sizes - n_test),
        x_test=x[te], y_test=central.y[rows[te]], test_offsets=_offsets(n_test),
        num_classes=central.num_classes, client_names=part.client_names,
        feature_names=central.feature_names, train_weights=weights, target_scale=central.target_scale)
