"""Real datasets larger than memory: a Parquet or CSV file, partitioned by a column, converted
once into memory-mapped ``.npy`` arrays, of which only the sampled clients' rows are read each
round (issue 15).

    write_disk("sales.parquet", "sales.disk", client_column="store", target="label")
    data = DiskDataset("sales.disk")
    fedlab.simulate("fedavg", "logreg", data, rounds=5, clients_per_round=1000, local_steps=20)

The directory holds x.npy [N, F] float32 (the raw features), y.npy [N] (int32 class index, or the
raw float32 target of a regression), offsets.npy [K + 1] (client k owns rows offsets[k]:offsets[k+1],
its training rows first, then its test rows), train_counts.npy and test_counts.npy [K],
clients.json (client names) and meta.json (features, classes, mean and std of the training rows,
the source's fingerprint). ``DiskDataset.stage(ids)`` copies the given clients' training rows,
standardized, into one engine ``DeviceData``; ``simulate`` stages each round's sampled clients.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
import pandas as pd

from fedlab.core.cache import cache_root
from fedlab.data.federated import FederatedDataset, check_labels_and_tests
from fedlab.data.loaders import MAX_CLASSES_AUTO

FORMAT = "fedlab-disk/1"
REMAP_BYTES = 1 << 28     # write_disk maps its output again after this many bytes of rows
SUFFIXES = (".parquet", ".csv")


# ---- reading the source in batches ------------------------------------------------------------
def _kind(source) -> str:
    suffix = pathlib.Path(source).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"source: must be a .parquet or .csv file, got {str(source)!r}")
    if not os.path.isfile(source):
        raise ValueError(f"source: file {str(source)!r} not found")
    return suffix[1:]


def _schema(source, kind: str):
    """The source's arrow schema (a CSV's types inferred from its first block)."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(source).schema_arrow
    import pyarrow.csv as pacsv

    with pacsv.open_csv(source) as reader:
        return reader.schema


def _batches(source, kind: str, columns: list[str], batch_rows: int, csv_types: dict | None = None):
    """Record batches of at most ``batch_rows`` rows holding ``columns``, in file order."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        # pre-buffering (the default read path) kept every row group read so far: 6 GB of memory for a
        # 5.5 GB file; a buffered stream reads one page at a time
        reader = pq.ParquetFile(source, buffer_size=1 << 22, pre_buffer=False)
        yield from reader.iter_batches(batch_size=batch_rows, columns=columns)
        return
    import pyarrow.csv as pacsv

    convert = pacsv.ConvertOptions(include_columns=columns, column_types=csv_types or {})
    with pacsv.open_csv(source, convert_options=convert) as reader:
        for batch in reader:
            for start in range(0, batch.num_rows, batch_rows):
                yield batch.slice(start, batch_rows)


def _column(batch, name: str, what: str) -> np.ndarray:
    col = batch.column(name)
    if col.null_count:
        raise ValueError(f"{what}: column {name!r} has missing values; drop or fill those rows first "
                         "(the disk format does not impute)")
    return col.to_numpy(zero_copy_only=False)


def source_fingerprint(source) -> str:
    """A short hash of the file's absolute path, size and modification time."""
    st = os.stat(source)
    text = f"{os.path.abspath(source)}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---- conversion ----------------------------------------------------------------------------------
def write_disk(source, out_dir, *, client_column: str, target: str, features=None, test_fraction: float = 0.2,
               batch_rows: int = 65536) -> pathlib.Path:
    """Convert a Parquet or CSV file (possibly larger than memory) into a DiskDataset directory.

    client_column: the column whose values are the clients (names sorted as values); target: the
    label column (classification for text labels and for whole numbers with at most 50 distinct
    values, else regression, as ``loaders.from_dataframe`` decides); features: numeric feature columns
    (default: every other column). A client's test rows are the LAST round(test_fraction * n_k) of
    its rows in file order (a temporal holdout), leaving at least one training row. Two streaming
    passes of ``batch_rows`` rows (1: rows per client and the label set; 2: rows scattered into
    place); memory O(batch_rows + clients). Missing values are refused, not imputed. Written into a
    temporary sibling directory renamed at the end: on any error nothing is left behind.
    Returns the directory's path.
    """
    # ---- checks before any work ----
    kind = _kind(source)
    if (not isinstance(test_fraction, (int, float)) or isinstance(test_fraction, bool)
            or not 0 <= test_fraction < 1):
        raise ValueError(f"test_fraction: must be in [0, 1), got {test_fraction!r}")
    if not isinstance(batch_rows, (int, np.integer)) or isinstance(batch_rows, bool) or batch_rows < 1:
        raise ValueError(f"batch_rows: must be an integer >= 1, got {batch_rows!r}")
    out_dir = pathlib.Path(out_dir)
    if out_dir.exists():
        raise ValueError(f"out_dir: {str(out_dir)!r} already exists; remove it or choose another directory")
    import pyarrow as pa

    schema = _schema(source, kind)
    available = list(schema.names)
    for param, name in (("client_column", client_column), ("target", target)):
        if name not in available:
            raise ValueError(f"{param}: column {name!r} not in {available}")
    if features is None:
        features = [c for c in available if c not in (client_column, target) and not c.startswith("__index_level_")]
    else:
        features = list(features)
        absent = [c for c in features if c not in available]
        if absent:
            raise ValueError(f"features: columns {absent} not in {available}")
        if target in features or client_column in features:
            raise ValueError("features: must not contain the target or the client column")
    if not features:
        raise ValueError("features: no feature columns left")
    types = {c: schema.field(c).type for c in available}
    bad = [c for c in features if not (pa.types.is_integer(types[c]) or pa.types.is_floating(types[c]))]
    if bad:
        raise ValueError(f"features: columns {bad} are not numeric ({[str(types[c]) for c in bad]}); "
                         "encode them as numbers first or leave them out of features")
    # a CSV's types are inferred per block: read numbers as float64 and clients as text throughout
    csv_types = {**{c: pa.float64() for c in features}, client_column: pa.string()}
    if pa.types.is_integer(types[target]) or pa.types.is_floating(types[target]):
        csv_types[target] = pa.float64()

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        # ---- pass 1: rows per client, the label set ----
        per_client = pd.Series(dtype=np.int64)
        labels, numeric_target, integral = set(), None, True
        for batch in _batches(source, kind, [client_column, target], batch_rows, csv_types):
            clients = _column(batch, client_column, "client_column")
            per_client = per_client.add(pd.Series(clients).value_counts(), fill_value=0)
            y = _column(batch, target, "target")
            if numeric_target is None:
                numeric_target = np.issubdtype(y.dtype, np.number) and y.dtype != np.bool_
            if numeric_target:
                if not np.all(np.isfinite(y)):
                    raise ValueError(f"target: column {target!r} has infinite values")
                integral = integral and bool(np.all(np.mod(y, 1) == 0))
            if not numeric_target or (integral and len(labels) <= MAX_CLASSES_AUTO):
                labels.update(np.unique(y).tolist())
        if per_client.empty:
            raise ValueError(f"source: {str(source)!r} has no rows")
        regression = bool(numeric_target) and (not integral or len(labels) > MAX_CLASSES_AUTO)
        classes = [] if regression else sorted(labels)
        per_client = per_client.sort_index().astype(np.int64)
        client_index = pd.Index(per_client.index)
        sizes = per_client.to_numpy()
        K, N, F = len(sizes), int(sizes.sum()), len(features)
        test = np.minimum(np.floor(test_fraction * sizes + 0.5).astype(np.int64), sizes - 1)
        train = sizes - test
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

        # ---- pass 2: every row to its place; statistics of the training rows ----
        for name, dtype, shape in (("x", np.float32, (N, F)), ("y", np.float32 if regression else np.int32, (N,))):
            np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)   # the file
        # the written pages of a mapping count in the resident set until it is unmapped: map the files
        # again every REMAP_BYTES written, so they stay in the page cache, not in this process
        remap_every = max(1, REMAP_BYTES // (batch_rows * (F + 1) * 4))
        seen = np.zeros(K, np.int64)                  # rows of each client placed so far
        n_fit, mean, m2 = 0, np.zeros(F), np.zeros(F)  # Chan et al.'s pairwise merge of (count, mean, M2)
        y_sum = y_sq = 0.0
        train_classes = np.zeros(len(classes), np.int64)
        label_index = pd.Index(classes)
        for number, batch in enumerate(_batches(source, kind, [client_column, target, *features], batch_rows, csv_types)):
            if number % remap_every == 0:
                x_out = y_out = None        # unmapped before mapping again
                x_out, y_out = (np.load(tmp / f"{name}.npy", mmap_mode="r+") for name in ("x", "y"))
            cid = client_index.get_indexer(_column(batch, client_column, "client_column"))
            x = np.stack([_column(batch, c, "features").astype(np.float32) for c in features], axis=1)
            if not np.all(np.isfinite(x)):
                raise ValueError(f"features: non-finite values in {[c for c, b in zip(features, ~np.isfinite(x).all(0)) if b]}")
            y_raw = _column(batch, target, "target")
            y = y_raw.astype(np.float32) if regression else label_index.get_indexer(y_raw).astype(np.int32)
            order = np.argsort(cid, kind="stable")   # rank of each row among its client's rows in this batch
            sorted_cid = cid[order]
            first = np.searchsorted(sorted_cid, sorted_cid)
            rank = np.empty_like(cid)
            rank[order] = np.arange(len(cid)) - first
            within = seen[cid] + rank
            x_out[offsets[cid] + within] = x
            y_out[offsets[cid] + within] = y
            np.add.at(seen, cid, 1)
            fit = within < train[cid]
            if fit.any():
                xf = x[fit].astype(np.float64)
                n_b, mean_b = len(xf), xf.mean(0)
                m2_b = ((xf - mean_b) ** 2).sum(0)
                delta, total = mean_b - mean, n_fit + n_b
                mean = mean + delta * n_b / total
                m2 = m2 + m2_b + delta ** 2 * n_fit * n_b / total
                n_fit = total
                if regression:
                    y_sum += float(y[fit].astype(np.float64).sum())
                    y_sq += float((y[fit].astype(np.float64) ** 2).sum())
                else:
                    train_classes += np.bincount(y[fit], minlength=len(classes))
        del x_out, y_out
        std = np.sqrt(m2 / max(n_fit, 1))
        np.save(tmp / "offsets.npy", offsets)
        np.save(tmp / "train_counts.npy", train)
        np.save(tmp / "test_counts.npy", test)
        (tmp / "clients.json").write_text(json.dumps([str(v) for v in client_index]))
        meta = dict(format=FORMAT, name=pathlib.Path(source).stem, source=os.path.abspath(source),
                    source_fingerprint=source_fingerprint(source), client_column=client_column, target=target,
                    features=features, test_fraction=test_fraction, task="regression" if regression else "classification",
                    classes=[str(c) if not isinstance(c, float) else f"{c:g}" for c in classes],
                    train_class_counts=train_classes.tolist(), rows=N, clients=K,
                    mean=mean.tolist(), std=np.where(std > 0, std, 1.0).tolist())
        if regression:
            y_mean = y_sum / n_fit
            y_std = float(np.sqrt(max(y_sq / n_fit - y_mean ** 2, 0.0)))
            meta["target_scale"] = [y_mean, y_std if y_std > 0 else 1.0]
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# ---- the dataset ------------------------------------------------------------------------------
class DiskDataset:
    """A converted directory (``write_disk``), memory-mapped read-only. What ``simulate`` needs of a
    dataset (num_clients, train_counts, test_counts, num_classes, input_shape, name, validate,
    check, fingerprint, names) plus ``stage(ids)`` (the engine's data for those clients) and
    ``evaluation_data(eval_clients, seed)`` (a FederatedDataset of a fixed sample of clients)."""

    def __init__(self, out_dir):
        self.path = pathlib.Path(out_dir)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise ValueError(f"out_dir: {str(self.path)!r} is not a converted dataset (no meta.json); "
                             "make one with fedlab.data.disk.write_disk")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"out_dir: {str(self.path)!r} has format {self.meta.get('format')!r}, "
                             f"expected {FORMAT!r}")
        self.x = np.load(self.path / "x.npy", mmap_mode="r")
        self.y = np.load(self.path / "y.npy", mmap_mode="r")
        self.offsets = np.load(self.path / "offsets.npy")
        self.train_counts = np.load(self.path / "train_counts.npy")
        self.test_counts = np.load(self.path / "test_counts.npy")
        self.client_names = tuple(json.loads((self.path / "clients.json").read_text()))
        self.name = self.meta["name"]
        self.feature_names = tuple(self.meta["features"])
        self.class_names = tuple(self.meta["classes"])
        self.num_classes = 0 if self.meta["task"] == "regression" else len(self.class_names)
        self.input_shape = (len(self.feature_names),)
        self.mean = np.asarray(self.meta["mean"], np.float32)
        self.std = np.asarray(self.meta["std"], np.float32)
        scale = self.meta.get("target_scale")
        self.target_scale = None if scale is None else (float(scale[0]), float(scale[1]))
        self._counts = None
        self._evaluation = {}

    @property
    def num_clients(self) -> int:
        return len(self.train_counts)

    @property
    def num_rows(self) -> int:
        return int(self.offsets[-1])

    def names(self) -> list[str]:
        return list(self.client_names)

    def validate(self) -> None:
        """The layout: offsets rise over every row, each client has a training row."""
        K = self.num_clients
        if (self.offsets.shape != (K + 1,) or self.offsets[0] != 0 or self.offsets[-1] != len(self.y)
                or len(self.x) != len(self.y) or np.any(self.train_counts + self.test_counts != np.diff(self.offsets))):
            raise ValueError(f"out_dir: {str(self.path)!r} has inconsistent offsets and counts; convert it again")
        if np.any(self.train_counts < 1):
            raise ValueError(f"clients {np.flatnonzero(self.train_counts < 1)[:10].tolist()} have no training rows")

    def check(self) -> list[str]:
        """As ``FederatedDataset.check``, from the stored counts (no pass over the rows)."""
        classes = np.flatnonzero(self.meta["train_class_counts"]) if self.num_classes > 0 else None
        return check_labels_and_tests(classes, self.test_counts, "(write_disk, cached_disk)")

    def fingerprint(self) -> str:
        """A short hash of the conversion (its source's fingerprint and options, the clients' counts)."""
        h = hashlib.sha256(json.dumps(self.meta, sort_keys=True).encode())
        for a in (self.offsets, self.train_counts):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]

    def _rows(self, ids, split: str):
        """(row numbers in the file arrays, [len(ids)] counts) of the clients' ``split`` rows."""
        start = self.offsets[ids] + (0 if split == "train" else self.train_counts[ids])
        n = (self.train_counts if split == "train" else self.test_counts)[ids]
        return np.repeat(start - (np.cumsum(n) - n), n) + np.arange(int(n.sum())), n

    def _read(self, rows, x_out=None, y_out=None):
        """x standardized with the training rows' mean and std, y as the model sees it (a regression
        target standardized), for the stored rows ``rows``; written into x_out / y_out if given."""
        # a fresh read-only map each time: the pages read leave the resident set with it (self.x would
        # keep every page ever read, up to the whole file over a long run)
        x = np.subtract(np.load(self.path / "x.npy", mmap_mode="r")[rows], self.mean, out=x_out)
        x /= self.std
        y = np.asarray(np.load(self.path / "y.npy", mmap_mode="r")[rows])
        if self.target_scale is not None:
            y = ((y - np.float32(self.target_scale[0])) / np.float32(self.target_scale[1])).astype(np.float32)
        if y_out is not None:
            y_out[...] = y
            y = y_out
        return x, y

    def stage(self, ids):
        """``engine.DeviceData`` holding the training rows of clients ``ids`` (ids: [S] distinct
        client ids), standardized, in one buffer of a power-of-two length (few shapes, few
        compiles); offsets: [K] each sampled client's first row in the buffer (0 for the others);
        counts: [K] every client's training rows."""
        import jax.numpy as jnp

        from fedlab.core.engine import DeviceData

        ids = np.unique(np.asarray(ids, np.int64))
        rows, n = self._rows(ids, "train")
        size = 1 << max(len(rows) - 1, 0).bit_length()
        x = np.zeros((size,) + self.input_shape, np.float32)
        y = np.zeros(size, self.y.dtype)
        self._read(rows, x[:len(rows)], y[:len(rows)])
        offsets = np.zeros(self.num_clients, np.int32)
        offsets[ids] = np.cumsum(n) - n
        if self._counts is None:
            self._counts = jnp.asarray(self.train_counts, jnp.int32)
        return DeviceData(jnp.asarray(x), jnp.asarray(y), None, jnp.asarray(offsets), self._counts)

    def evaluation_data(self, eval_clients: int | None = None, seed: int = 0) -> FederatedDataset:
        """A FederatedDataset of ``eval_clients`` clients (the sample ``simulate.client_sample`` draws
        from ``seed``; None: every client) with their train and test rows, standardized; made once."""
        from fedlab.core.simulate import sample_client_ids

        key = (eval_clients, seed)
        if key not in self._evaluation:
            ids = sample_client_ids(self.num_clients, eval_clients, seed)
            parts = {}
            for split in ("train", "test"):
                rows, n = self._rows(ids, split)
                parts[split] = (*self._read(rows), np.concatenate([[0], np.cumsum(n)]))
            name = self.name if len(ids) == self.num_clients else f"{self.name}, evaluated on {len(ids)} sampled clients"
            self._evaluation[key] = FederatedDataset(
                name, *parts["train"], *parts["test"], self.num_classes,
                client_names=tuple(self.client_names[i] for i in ids), feature_names=self.feature_names,
                target_scale=self.target_scale)
        return self._evaluation[key]

    def __repr__(self) -> str:
        return (f"DiskDataset({str(self.path)!r}, {self.num_clients} clients, {self.num_rows} rows, "
                f"{len(self.feature_names)} features, {self.num_classes or 'regression'} classes)")


def from_disk(out_dir) -> DiskDataset:
    """Open a directory written by ``write_disk``."""
    return DiskDataset(out_dir)


def cache_dir() -> pathlib.Path:
    """Where converted files live: $FEDLAB_CACHE/disk, else ~/.cache/fedlab/disk."""
    return cache_root() / "disk"


def cached_disk(source, *, client_column: str, target: str, features=None, test_fraction: float = 0.2,
                cache=None) -> DiskDataset:
    """``source`` converted once (``write_disk``) into the cache, keyed by the file's path, size,
    modification time and the options; later calls open the converted directory."""
    _kind(source)
    options = dict(source=source_fingerprint(source), client_column=client_column, target=target,
                   features=None if features is None else list(features), test_fraction=float(test_fraction))
    key = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]
    out = pathlib.Path(cache or cache_dir()) / f"{pathlib.Path(source).stem}-{key}"
    if not (out / "meta.json").is_file():
        try:
            write_disk(source, out, client_column=client_column, target=target, features=features,
                       test_fraction=test_fraction)
        except (ValueError, OSError):
            if not (out / "meta.json").is_file():    # not another process converting it at the same time
                raise
    return DiskDataset(out)
