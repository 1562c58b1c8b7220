"""The federated dataset: every client's train and test rows, packed into flat arrays.

Client k owns rows ``offsets[k]:offsets[k + 1]`` of the flat arrays (the packed layout of
the shared benchmark). The engine gathers mini-batches straight from the flat arrays by
offset, so nothing is padded or copied per round.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import pandas as pd


def _offsets(counts: Sequence[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.asarray(counts, dtype=np.int64))]).astype(np.int64)


def check_labels_and_tests(classes, test_counts, where: str) -> list[str]:
    """The checks every dataset kind makes of its labels and test split: ValueError when the
    training rows hold a single class (``classes``: the distinct training labels, None for
    regression) or no client has test rows; a warning (returned) when some clients have none.
    ``where`` names what takes test_fraction."""
    if classes is not None and len(classes) < 2:
        raise ValueError(f"target has a single class in the training rows (every label is {classes[0]}): a "
                         f"classifier has nothing to learn; check the target column")
    K, missing = len(test_counts), int(np.sum(np.asarray(test_counts) == 0))
    if missing == K:
        raise ValueError(f"the dataset has no test rows, so no run can be evaluated; keep some for testing with "
                         f"test_fraction > 0 {where}")
    return [f"{missing} of {K} clients have no test rows; per-client accuracy covers the other {K - missing}"
            ] if missing else []


@dataclasses.dataclass(frozen=True, eq=False)
class FederatedDataset:
    """Per-client train/test data in flat arrays plus offsets.

    x_train: [N_train, *input_shape] float32; y_train: [N_train] int32 class ids
    (float32 targets when ``num_classes == 0``, i.e. regression);
    train_offsets: [num_clients + 1], client k owns rows train_offsets[k]:train_offsets[k+1].
    The test arrays follow the same layout. ``train_weights`` ([N_train] float32 or None)
    weighs each example in the training loss (e.g. to balance rare classes). ``target_scale``
    (regression): (mean, std) of the raw target, which y holds standardised; the History reports
    RMSE and MAE in the raw units (y * std + mean gives them back).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    train_offsets: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    test_offsets: np.ndarray
    num_classes: int
    client_names: tuple[str, ...] | None = None
    feature_names: tuple[str, ...] | None = None
    train_weights: np.ndarray | None = None
    target_scale: tuple[float, float] | None = None

    def __post_init__(self):
        self.validate()

    # ---- construction -------------------------------------------------------------
    @classmethod
    def from_clients(cls, name, train, test, num_classes, **kwargs) -> "FederatedDataset":
        """Build from per-client lists: train = [(x_k, y_k), ...], test likewise."""
        if len(train) != len(test):
            raise ValueError(f"train has {len(train)} clients but test has {len(test)}")
        if len(train) == 0:
            raise ValueError("a federated dataset needs at least 1 client")
        feat = np.asarray(train[0][0]).shape[1:]
        y_dtype = np.int32 if num_classes > 0 else np.float32

        def stack(parts):
            xs = [np.asarray(x, np.float32).reshape((-1,) + feat) for x, _ in parts]
            ys = [np.asarray(y).astype(y_dtype).reshape(-1) for _, y in parts]
            return np.concatenate(xs), np.concatenate(ys), _offsets([len(y) for y in ys])

        x_tr, y_tr, off_tr = stack(train)
        x_te, y_te, off_te = stack(test)
        return cls(name, x_tr, y_tr, off_tr, x_te, y_te, off_te, num_classes, **kwargs)

    @classmethod
    def from_npz(cls, path, name: str | None = None) -> "FederatedDataset":
        """Load the packed layout of ../shared/bench (X_train, y_train, train_offsets, ...)."""
        import os

        with np.load(path) as z:
            missing = [k for k in ("X_train", "y_train", "train_offsets", "X_test", "y_test",
                                   "test_offsets") if k not in z.files]
            if missing:
                raise ValueError(f"npz file {path} lacks arrays {missing}")
            y_train = z["y_train"]
            is_int = np.issubdtype(y_train.dtype, np.integer)
            num_classes = int(max(y_train.max(), z["y_test"].max(initial=0)) + 1) if is_int else 0
            return cls(name or os.path.basename(str(path)), z["X_train"].astype(np.float32),
                       y_train.astype(np.int32 if is_int else np.float32),
                       z["train_offsets"].astype(np.int64), z["X_test"].astype(np.float32),
                       z["y_test"].astype(np.int32 if is_int else np.float32),
                       z["test_offsets"].astype(np.int64), num_classes)

    def to_npz(self, path) -> None:
        np.savez(path, X_train=self.x_train, y_train=self.y_train, train_offsets=self.train_offsets,
                 X_test=self.x_test, y_test=self.y_test, test_offsets=self.test_offsets)

    # ---- checks ---------------------------------------------------------------------
    def validate(self) -> None:
        for split, x, y, off in (("train", self.x_train, self.y_train, self.train_offsets),
                                 ("test", self.x_test, self.y_test, self.test_offsets)):
            if len(x) != len(y):
                raise ValueError(f"x_{split} has {len(x)} rows but y_{split} has {len(y)}")
            if off.ndim != 1 or off[0] != 0 or off[-1] != len(y) or np.any(np.diff(off) < 0):
                raise ValueError(f"{split}_offsets must rise from 0 to {len(y)}")
            if not np.all(np.isfinite(x)):
                raise ValueError(f"x_{split} contains NaN or infinite values; impute them first")
            if self.num_classes > 0 and len(y) and (y.min() < 0 or y.max() >= self.num_classes):
                raise ValueError(f"y_{split} labels must lie in [0, {self.num_classes})")
            if self.num_classes == 0 and not np.all(np.isfinite(y)):
                raise ValueError(f"y_{split} contains NaN or infinite targets")
        if len(self.train_offsets) != len(self.test_offsets):
            raise ValueError("train_offsets and test_offsets must describe the same clients")
        if np.any(np.diff(self.train_offsets) == 0):
            empty = np.flatnonzero(np.diff(self.train_offsets) == 0).tolist()
            raise ValueError(f"clients {empty[:10]} have no training examples")
        if self.client_names is not None and len(self.client_names) != self.num_clients:
            raise ValueError("client_names must have one name per client")
        if self.train_weights is not None and self.train_weights.shape != self.y_train.shape:
            raise ValueError("train_weights must have one weight per training example")

    def check(self) -> list[str]:
        """Degenerate data, caught before a run (``validate`` checks the layout, this the content).

        Errors (ValueError): a classification target with a single class in the training rows
        (nothing to learn); no test rows at all (nothing to evaluate). Warnings, returned as
        strings (empty list: all is well): some clients without test rows (per-client accuracy
        leaves them out); constant feature columns of tabular data (named when ``feature_names``
        is set; images, whose borders are often constant, are not checked).
        """
        found = check_labels_and_tests(np.unique(self.y_train) if self.num_classes > 0 else None,
                                       self.test_counts, "(load_federated, federate)")
        if len(self.input_shape) == 1:          # tabular: images often have constant borders
            parts = [x for x in (self.x_train, self.x_test) if len(x)]
            low, high = np.min([x.min(0) for x in parts], 0), np.max([x.max(0) for x in parts], 0)
            constant = np.flatnonzero(low == high)
            if len(constant):
                named = self.feature_names is not None and len(self.feature_names) == self.num_features
                shown = [self.feature_names[j] if named else int(j) for j in constant[:5]]
                more = f" and {len(constant) - 5} more" if len(constant) > 5 else ""
                found.append(f"{len(constant)} constant feature column(s) carry no information: "
                             f"{', '.join(map(str, shown))}{more}" + ("" if named else " (column indices)"))
        return found

    # ---- views ------------------------------------------------------------------------
    @property
    def num_clients(self) -> int:
        return len(self.train_offsets) - 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_features(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def train_counts(self) -> np.ndarray:
        """[num_clients] number of training examples n_k of each client."""
        return np.diff(self.train_offsets)

    @property
    def test_counts(self) -> np.ndarray:
        return np.diff(self.test_offsets)

    def names(self) -> list[str]:
        return list(self.client_names) if self.client_names else [str(k) for k in range(self.num_clients)]

    def client(self, k: int, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of client k's ``split`` ('train' or 'test'), as views, not copies."""
        if not 0 <= k < self.num_clients:
            raise IndexError(f"client must lie in [0, {self.num_clients}), got {k}")
        x, y, off = ((self.x_train, self.y_train, self.train_offsets) if split == "train"
                     else (self.x_test, self.y_test, self.test_offsets))
        return x[off[k]:off[k + 1]], y[off[k]:off[k + 1]]

    def label_histogram(self, split: str = "train") -> pd.DataFrame:
        """Clients x classes table of example counts (classification only)."""
        if self.num_classes == 0:
            raise ValueError("label_histogram needs a classification dataset")
        y, off = (self.y_train, self.train_offsets) if split == "train" else (self.y_test, self.test_offsets)
        client = np.repeat(np.arange(self.num_clients), np.diff(off))
        counts = np.zeros((self.num_clients, self.num_classes), np.int64)
        np.add.at(counts, (client, y), 1)
        return pd.DataFrame(counts, index=pd.Index(self.names(), name="client"),
                            columns=pd.Index(range(self.num_classes), name="label"))

    def summary(self) -> pd.DataFrame:
        """One row per client: train/test sizes and (classification) label skew."""
        df = pd.DataFrame({"train": self.train_counts, "test": self.test_counts},
                          index=pd.Index(self.names(), name="client"))
        if self.num_classes > 0:
            hist = self.label_histogram().to_numpy()
            frac = hist / hist.sum(1, keepdims=True)
            glob = hist.sum(0) / hist.sum()
            df["classes"] = (hist > 0).sum(1)
            df["majority_fraction"] = frac.max(1)
            df["tv_distance"] = 0.5 * np.abs(frac - glob).sum(1)
        return df

    def __repr__(self) -> str:
        n = self.train_counts
        return (f"FederatedDataset({self.name!r}, clients={self.num_clients}, "
                f"train={len(self.y_train)}, test={len(self.y_test)}, input_shape={self.input_shape}, "
                f"classes={self.num_classes}, examples/client min={n.min()} median={int(np.median(n))} "
                f"max={n.max()})")
