"""Cost of one round of Paillier aggregation vs model size, packed vs unpacked.

    python benchmarks/bench_paillier.py [--clients 3] [--key-bits 2048] [--sizes 100 1000 10000]
                                        [--unpacked-max 1000]

Prints one row per (parameters, packing): ciphertexts per client, bytes sent by all clients,
and the seconds spent encrypting (all clients), summing (server) and decrypting (key holder).
Unpacked runs are skipped above --unpacked-max parameters (they grow ~31x slower).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from phe import paillier as phe_paillier

from fedlab.privacy.paillier import encrypted_sum


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--key-bits", type=int, default=2048)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--unpacked-max", type=int, default=1000)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    keypair = phe_paillier.generate_paillier_keypair(n_length=args.key_bits)
    print(f"{args.key_bits}-bit key generated in {time.perf_counter() - start:.2f} s")
    rng = np.random.default_rng(0)
    rows = []
    for d in args.sizes:
        x = rng.normal(size=(args.clients, d)) * 0.01
        for packed in (True, False):
            if not packed and d > args.unpacked_max:
                continue
            res = encrypted_sum(x, *keypair, packed=packed)
            rows.append({"parameters": d, "packed": packed, "ciphertexts/client": res.ciphertexts_per_client,
                         "MB up": res.bytes_up / 1e6, "encrypt s": res.seconds_encrypt,
                         "sum s": res.seconds_sum, "decrypt s": res.seconds_decrypt,
                         "round s": res.seconds_encrypt + res.seconds_sum + res.seconds_decrypt,
                         "max error": float(np.abs(res.total - x.sum(0)).max())})
    table = pd.DataFrame(rows)
    print(f"clients per round: {args.clients}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return table


if __name__ == "__main__":
    main()
