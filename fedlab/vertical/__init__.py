"""Vertical federated learning: parties hold different columns of the same customers.

* ``psi_align``: find the shared customers by ECDH private set intersection.
* ``splitnn`` / ``train_splitnn``: a neural network split at a cut layer across parties.
* ``fit_secureboost`` / ``predict_secureboost``: gradient-boosted trees with Paillier-
  encrypted gradients (SecureBoost).
"""
from fedlab.vertical.psi import Alignment, Message, align_frames, hash_id, psi_align
from fedlab.vertical.secureboost import (HostModel, SecureBoostConfig, SecureBoostModel, Tree, apply_bins,
                                         fit_secureboost, predict_margin, predict_secureboost, quantile_cuts)
from fedlab.vertical.splitnn import (SplitNN, SplitState, batch_indices, softmax_cross_entropy, splitnn,
                                     splitnn_step, squared_error, train_splitnn)

__all__ = [
    "Alignment", "Message", "align_frames", "hash_id", "psi_align",
    "HostModel", "SecureBoostConfig", "SecureBoostModel", "Tree", "apply_bins", "fit_secureboost",
    "predict_margin", "predict_secureboost", "quantile_cuts",
    "SplitNN", "SplitState", "batch_indices", "softmax_cross_entropy", "splitnn", "splitnn_step",
    "squared_error", "train_splitnn",
]
