"""Membership inference by loss threshold (Yeom et al. 2018, "Privacy Risk in Machine Learning:
Analyzing the Connection to Overfitting"): guess "member" when the model's loss on an example is
low. Sweeping the threshold gives a ROC curve; its AUC is 0.5 for a model that leaks nothing about
membership and 1.0 for one that memorised its training set.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from fedlab.core.types import Model, Params


def example_losses(model: Model, params: Params, x, y) -> np.ndarray:
    """[examples] loss of ``model`` on each example. x: [examples, *input_shape]; y: [examples]."""
    return np.asarray(model.example_losses(params, jnp.asarray(x), jnp.asarray(y)))


def attack_from_losses(member_losses, nonmember_losses) -> dict:
    """Loss-threshold attack scores: ``auc`` (sklearn's roc_auc_score with score -loss) and
    ``advantage`` = max over thresholds of TPR - FPR. Non-finite losses (a diverged model) count
    as the largest loss."""
    big = np.finfo(np.float64).max
    member_losses, nonmember_losses = (np.nan_to_num(np.ravel(np.asarray(v, np.float64)), nan=big, posinf=big)
                                       for v in (member_losses, nonmember_losses))
    if len(member_losses) == 0 or len(nonmember_losses) == 0:
        raise ValueError("members and nonmembers must both be non-empty")
    labels = np.r_[np.ones(len(member_losses)), np.zeros(len(nonmember_losses))]
    scores = -np.r_[member_losses, nonmember_losses]
    fpr, tpr, _ = roc_curve(labels, scores)
    return {"auc": float(roc_auc_score(labels, scores)), "advantage": float(np.max(tpr - fpr))}


def membership_inference(model: Model, params: Params, members, nonmembers) -> dict:
    """Attack AUC and advantage of the loss-threshold attack on ``params``.

    members: (x, y) the model was trained on; nonmembers: (x, y) from the same distribution it
    never saw (e.g. the test split). Use equal sizes for an AUC that reads as a balanced guess.
    """
    return attack_from_losses(example_losses(model, params, *members),
                              example_losses(model, params, *nonmembers))
