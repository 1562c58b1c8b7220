"""Secure federated transfer learning (Liu et al. 2018/2020; FATE's Hetero-FTL): the target
party's accuracy on its customers outside the overlap, vs the overlap size, for FTL and for the
target party alone; and the cost of one Paillier-protected gradient exchange.

    python benchmarks/ftl_overlap.py [--smoke] [--dataset credit|digits] [--gamma 0.1] [--loss taylor|logistic]
                                       [--no-exchange]

Data: modeldata's credit_data (4,454 loans, Status good/bad, 72 % good), split by
``fedlab.transfer.ftl.credit_parties``: the lender (source) holds Seniority, Home, Time, Marital,
Records, Job, Amount, Price and Status for 3,000 customers; the bank (target) holds Age,
Expenses, Income, Assets, Debt for 1,454 customers of its own plus the overlap (50, 200, 1000 of
the lender's). Default FTLConfig (d = 8, one hidden layer of 16, gamma 0.1 (``--gamma``), lam 1e-3, Taylor loss,
100 epochs of batches of 64, Adam 0.01) for FTL and for the target alone (same network + a
linear head); the all-labels reference trains 30 epochs on the bank's features of all 3,000
lender customers. Seeds 0, 1, 2. ``--dataset digits``: scikit-learn's digits, "high" (5-9) vs "low"
(0-4), the source seeing the left half of 1,300 images with labels, the target the right half of
497 images of its own plus the overlap (``fedlab.transfer.ftl.digits_parties``).
"""
from __future__ import annotations

import argparse
import pathlib
import time

import jax
import numpy as np

from fedlab.transfer import ftl


def exchange_cost(rows: int, key_bits: int) -> ftl.ExchangeCost:
    """One protected exchange on ``rows`` overlap customers of the credit split, default networks;
    checks it against the plain gradients."""
    from jax.flatten_util import ravel_pytree

    split = ftl.credit_parties(overlap=200, key=jax.random.key(0))
    p = ftl.prepare_parties(split.source, split.target, label_column="Status", psi_key=jax.random.key(0))
    config = ftl.FTLConfig()
    net_a = ftl.representation_net(p.xa.shape[1], config.dim, config.hidden)
    net_b = ftl.representation_net(p.xb.shape[1], config.dim, config.hidden)
    params_a, params_b = net_a.init(jax.random.key(1)), net_b.init(jax.random.key(2))
    args = (params_a, params_b, net_a, net_b, p.xa, p.ya, p.xa[p.overlap_a[:rows]], p.xb[p.overlap_b[:rows]],
            p.ya[p.overlap_a[:rows]])
    plain = ftl.plain_gradients(*args, gamma=config.gamma, lam=config.lam)    # the default config
    *protected, cost = ftl.protected_gradients(*args, gamma=config.gamma, lam=config.lam, key_bits=key_bits,
                                               insecure_test_key=key_bits < 2048)
    error = max(float(np.max(np.abs(ravel_pytree(a)[0] - ravel_pytree(b)[0]))) for a, b in zip(plain, protected))
    print(f"protected exchange, {rows} rows, {key_bits}-bit keys, parameters A {ravel_pytree(params_a)[0].size} "
          f"B {ravel_pytree(params_b)[0].size}: {cost.ciphertexts_a_to_b} + {cost.ciphertexts_b_to_a} ciphertexts, "
          f"{cost.bytes / 1e6:.2f} MB, encrypt {cost.seconds_encrypt:.1f} s, homomorphic {cost.seconds_compute:.1f} s, "
          f"decrypt {cost.seconds_decrypt:.1f} s; max |protected - plain| gradient {error:.1e}", flush=True)
    return cost


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--dataset", default="credit", choices=["credit", "digits"])
    parser.add_argument("--out", default=None, help="default benchmarks/results/ftl_overlap_DATASET.csv")
    parser.add_argument("--gamma", type=float, default=ftl.FTLConfig.gamma, help="alignment weight")
    parser.add_argument("--loss", default="taylor", choices=["taylor", "logistic"])
    parser.add_argument("--no-exchange", action="store_true", help="skip the protected-exchange cost")
    args = parser.parse_args(argv)
    suffix = "" if args.loss == "taylor" else f"_{args.loss}"
    out = args.out or f"benchmarks/results/ftl_overlap_{args.dataset}_gamma{args.gamma:g}{suffix}.csv"
    overlaps, seeds, options = ([50, 200], [0], {"epochs": 5}) if args.smoke else ([50, 200, 1000], [0, 1, 2], {})
    options.update(gamma=args.gamma, loss=args.loss)
    start = time.time()
    table = ftl.overlap_comparison(overlaps, seeds, dataset=args.dataset, log=lambda r: print(r, flush=True),
                                   **options)
    if not args.smoke:
        pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False)
    print(f"\n{time.time() - start:.0f} s. Target-party accuracy on its non-overlap customers (mean ± std over seeds):")
    print(ftl.overlap_table(table, "accuracy").to_string())
    print("\nAUC:")
    print(ftl.overlap_table(table, "auc").to_string())
    if not args.no_exchange:
        exchange_cost(4 if args.smoke else 8, 1024 if args.smoke else 2048)


if __name__ == "__main__":
    main()
