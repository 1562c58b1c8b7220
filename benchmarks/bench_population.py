"""Peak memory and setup time against the population size (issue 15).

Each cell runs in a fresh process: ``fedlab.Experiment(...).build()`` (data generation or loading:
the setup), then a few rounds of FedAvg with 1000 clients a round (100 below 1000 clients), 20 local
steps of batch 10. Printed: setup seconds, first round (compile included) and steady round seconds,
and the process's peak resident memory (ru_maxrss, data generation included). ``client_data``
auto keeps populations of up to 5000 clients in memory and generates larger ones on demand.

    python benchmarks/bench_population.py                                # 1k, 10k, 100k; logreg and mlp
    python benchmarks/bench_population.py --clients 1000 10000 --client-data memory   # the in-memory path
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import json, resource, sys, time
    t0 = time.perf_counter()
    import fedlab
    settings = json.loads(sys.argv[1])
    exp = fedlab.Experiment(**settings)
    t1 = time.perf_counter()
    built = exp.build()
    setup = time.perf_counter() - t1
    h = exp.run(built=built, progress=False)
    print(json.dumps(dict(setup=setup, import_s=t1 - t0, first=float(h["seconds"].iloc[0]),
                          steady=float(h["seconds"].iloc[1:].median()), status=h.status,
                          accuracy=float(h["test_accuracy"].iloc[-1]), client_data=exp.resolved_client_data,
                          evaluated=h.attrs.get("evaluated_clients"),
                          peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)))
""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--datasets", nargs="+", default=["synthetic_iid", "synthetic:1,1"])
    parser.add_argument("--models", nargs="+", default=["logreg", "mlp"])
    parser.add_argument("--client-data", default="auto", choices=["auto", "memory", "generated"])
    parser.add_argument("--rounds", type=int, default=3)
    a = parser.parse_args()
    print("| dataset | model | clients | client data | setup s | first round s | steady round s | peak RSS GiB "
          "| evaluated clients | accuracy |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for dataset in a.datasets:
        for model in a.models:
            for clients in a.clients:
                settings = dict(dataset=dataset, model=model, num_clients=clients,
                                clients_per_round=min(1000, clients // 10), local_steps=20, batch_size=10,
                                rounds=a.rounds, client_data=a.client_data)
                done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(settings)], capture_output=True,
                                      text=True)
                if done.returncode:
                    print(f"| {dataset} | {model} | {clients} | {a.client_data} | failed: "
                          f"{done.stderr.strip().splitlines()[-1][:80]} |||||||", flush=True)
                    continue
                r = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"| {dataset} | {model} | {clients} | {r['client_data']} | {r['setup']:.1f} | {r['first']:.1f} | "
                      f"{r['steady']:.3f} | {r['peak_rss_gib']:.2f} | {r['evaluated']} | {r['accuracy']:.3f} |",
                      flush=True)


if __name__ == "__main__":
    main()
