"""Data-parallel scaling of ResNet-20 training over MPI: measure here, model a cluster.

Measure (one JSON line on stdout from rank 0)::

    mpirun -n 2 --bind-to none python bench/mpi_scaling.py measure --threads 1
    mpirun -n 2 --mca btl tcp,self python bench/mpi_scaling.py measure --threads 1
    mpirun -n 1 --bind-to none python bench/mpi_scaling.py measure --threads 2

ResNet-20 (float32, 3x32x32 inputs, synthetic data), a global batch of --batch images per
step split over the P processes, SGD. Reports images/s, and per step: forward, backward,
the share of the gradient bytes already summed when backward ended (fully hidden), the
time step() waited for the gradient sums (the most over the ranks, which includes
waiting for a slower rank, and the least, the slowest rank's: the communication that did not
overlap backward), and the cost of the same gradient Allreduce alone (blocking), plus the
time of an 8-byte Allreduce (the per-message latency).

Model (prints a table)::

    python bench/mpi_scaling.py model --step-s 0.80 --backward-s 0.50 --alpha-us 30

predicts the efficiency of P nodes, each computing a batch of the measured size per step
(weak scaling: the global batch grows with P), with ring Allreduce over a link of 10, 25
and 100 Gb/s:  T_ar = 2 (P-1) alpha + 2 (P-1)/P * bytes / bandwidth + (P-1)/P * bytes * gamma,
summed over the gradient buckets of ResNet-20 (float32), efficiency = T_compute /
(T_compute + T_exposed), with T_exposed = T_ar (no overlap) or max(T_ar - T_backward,
T_ar of the last bucket) (hidden behind backward as far as it lasts, except the bucket of
the first layers, which can only start when backward ends).
"""
import argparse
import json
import sys
import time

import numpy as np


def measure(args):
    import fastconv
    from fastconv import distributed as dist
    from fastconv.data import DataLoader
    from fastconv.models import get_model
    from fastconv.nn import CrossEntropyLoss
    from fastconv.optim import SGD

    comm = dist.world()
    P, me = comm.Get_size(), comm.Get_rank()
    fastconv.set_num_threads(args.threads or dist.threads_per_rank(comm))
    fastconv.keep_freed_memory()
    model = get_model("resnet20", in_channels=3, num_classes=10, input_size=32, seed=0)
    dp = dist.DataParallel(model, overlap=not args.no_overlap)
    rng = np.random.default_rng(0)
    n = args.batch * (args.steps + 1)
    loader = dp.shard(DataLoader(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8),
                                 rng.integers(0, 10, n), args.batch, shuffle=True))
    opt = dp.distribute(SGD(model.parameters(), lr=0.01, momentum=0.9))
    loss_fn = CrossEntropyLoss()
    rows = []
    for xb, yb in loader:
        comm.Barrier()
        t0 = time.perf_counter()
        opt.zero_grad()
        loss_fn.forward(model(xb), yb)
        t1 = time.perf_counter()
        model.backward_params(loss_fn.backward())
        t2 = time.perf_counter()
        waited = dp.allreduce_gradients()
        t3 = time.perf_counter()
        super(type(opt), opt).step()        # the update alone (the sums are done)
        t4 = time.perf_counter()
        rows.append((t4 - t0, t1 - t0, t2 - t1, waited, t4 - t3))
    rows = np.array(rows[1:])               # the first step warms up
    hidden = dp.stats["bytes_done_in_backward"] / (dp.stats["bytes_per_step"] * dp.stats["steps"])
    # the same sums alone, blocking: what communication costs when nothing overlaps it
    grads = [b.flat for b in dp._buckets]
    ar = []
    for _ in range(args.reps):
        comm.Barrier()
        t0 = time.perf_counter()
        for g in grads:
            comm.Allreduce(dp.MPI.IN_PLACE, g)
        ar.append(time.perf_counter() - t0)
    small, one = [], np.zeros(1)
    for _ in range(200):
        t0 = time.perf_counter()
        comm.Allreduce(dp.MPI.IN_PLACE, one)
        small.append(time.perf_counter() - t0)
    a, b = np.ones(2**18, np.float32), np.ones(2**18, np.float32)
    t0 = time.perf_counter()
    for _ in range(100):
        a += b
    gamma = (time.perf_counter() - t0) / 100 / a.nbytes
    # the slowest rank sets the pace: maxima over ranks of the medians
    med = np.median(rows, axis=0)
    least_wait = comm.allreduce(med[3], op=dp.MPI.MIN)     # the slowest rank's: no imbalance in it
    comm.Allreduce(dp.MPI.IN_PLACE, med, op=dp.MPI.MAX)
    if me == 0:
        out = dict(processes=P, threads=fastconv.get_num_threads(), batch=args.batch,
                   overlap=not args.no_overlap, step_s=med[0], forward_s=med[1],
                   backward_s=med[2], wait_s=med[3], least_wait_s=least_wait, update_s=med[4],
                   images_per_s=args.batch / med[0], allreduce_s=float(np.median(ar)), allreduce_min_s=float(np.min(ar)),
                   allreduce_8B_s=float(np.median(small)), gradient_bytes=int(sum(g.nbytes for g in grads)),
                   buckets=len(grads), add_s_per_byte=gamma, summed_during_backward=hidden)
        print(json.dumps(out), flush=True)


def ring_allreduce_s(P, nbytes, alpha, bandwidth, gamma):
    return 2 * (P - 1) * alpha + 2 * (P - 1) / P * nbytes / bandwidth + (P - 1) / P * nbytes * gamma


def model(args):
    from fastconv.distributed import bucket_groups
    from fastconv.models import get_model
    params = get_model("resnet20", in_channels=3, num_classes=10, input_size=32).parameters()
    buckets = [sum(p.grad.nbytes for p in g) for g in bucket_groups(params, args.bucket_mb)]
    nodes = [2, 4, 8, 16, 32, 64, 128, 256]
    print(f"inputs: compute {args.step_s * 1e3:.0f} ms/step (backward {args.backward_s * 1e3:.0f} ms), "
          f"gradient buckets {buckets} bytes, alpha {args.alpha_us:.0f} us, "
          f"gamma {args.gamma_ns_per_byte:.2f} ns/byte")
    print("| link | overlap | " + " | ".join(f"P={p}" for p in nodes) + " |")
    print("|---|---|" + "---|" * len(nodes))
    for gbps in (10, 25, 100):
        for overlap in (False, True):
            cells = []
            for p in nodes:
                each = [ring_allreduce_s(p, b, args.alpha_us * 1e-6, gbps * 1e9 / 8,
                                         args.gamma_ns_per_byte * 1e-9) for b in buckets]
                # the last bucket (the first layers) can only start when backward ends
                exposed = max(sum(each) - args.backward_s, each[-1]) if overlap else sum(each)
                cells.append(f"{100 * args.step_s / (args.step_s + exposed):.1f}%")
            print(f"| {gbps} Gb/s | {'behind backward' if overlap else 'none'} | "
                  + " | ".join(cells) + " |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--batch", type=int, default=128, help="global batch per step")
    m.add_argument("--steps", type=int, default=6)
    m.add_argument("--threads", type=int, default=None)
    m.add_argument("--reps", type=int, default=20, help="repetitions of the blocking Allreduce")
    m.add_argument("--no-overlap", action="store_true")
    m.set_defaults(func=measure)
    m = sub.add_parser("model")
    m.add_argument("--step-s", type=float, required=True, help="measured compute time per step")
    m.add_argument("--backward-s", type=float, required=True, help="measured backward time per step")
    m.add_argument("--bucket-mb", type=float, default=1.0, help="DataParallel's bucket size")
    m.add_argument("--alpha-us", type=float, required=True, help="per-message latency")
    m.add_argument("--gamma-ns-per-byte", type=float, default=0.0, help="reduction cost")
    m.set_defaults(func=model)
    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
