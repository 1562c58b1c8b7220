"""A multi-host fedlab run on one machine: two processes, one CPU device each, joined by JAX's
multi-controller runtime (``jax.distributed.initialize``) with gloo CPU collectives.

    python examples/multihost_cpu.py            # starts both processes and compares with one device

Every process runs the same program (SPMD): the same data (generated from the seed), the same
``simulate(..., devices=2)`` call; the round's sampled clients are split across the two
processes' devices and the weighted mean is one all-reduce. On real hosts, run the worker on
each host with the coordinator's address, ``--num-processes`` and its own ``--process-id``
(and drop the gloo line on GPUs, which use NCCL).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

RUN = dict(rounds=3, clients_per_round=8, local_steps=5, batch_size=10)


def history_of(devices: int):
    import fedlab
    from fedlab.data.loaders import load_federated

    data = load_federated("synthetic:1,1", num_clients=40, seed=0)
    h = fedlab.simulate("fedavg", "logreg", data, **RUN, devices=devices, progress=False)
    return h[["local_loss", "train_loss", "test_accuracy"]].values.tolist()


def worker(coordinator: str, num_processes: int, process_id: int) -> None:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    rows = history_of(devices=jax.device_count())          # every process's devices together
    print(json.dumps({"process": jax.process_index(), "devices": jax.device_count(), "history": rows}), flush=True)
    jax.distributed.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--process-id", type=int, help="run as this worker (else start them all)")
    parser.add_argument("--num-processes", type=int, default=2)
    parser.add_argument("--coordinator", default="localhost:12915")
    args = parser.parse_args()
    if args.process_id is not None:
        worker(args.coordinator, args.num_processes, args.process_id)
        return
    env = {**os.environ, "XLA_FLAGS": ""}
    procs = [subprocess.Popen([sys.executable, __file__, "--process-id", str(i), "--num-processes",
                               str(args.num_processes), "--coordinator", args.coordinator],
                              stdout=subprocess.PIPE, text=True, env=env) for i in range(args.num_processes)]
    outs = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in procs]
    single = history_of(devices=1)
    for out in outs:
        same = max(abs(a - b) for r, s in zip(out["history"], single) for a, b in zip(r, s))
        print(f"process {out['process']} of {args.num_processes} ({out['devices']} devices in the mesh): "
              f"max |difference| from the one-device run {same:.2e}")


if __name__ == "__main__":
    main()
