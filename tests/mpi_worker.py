"""Run by tests/test_distributed.py as ``mpirun -n P python mpi_worker.py MODE OUT``: every rank
writes what the test compares with one process into OUT/rank<r>.npz.

Modes: ``plain`` (no BatchNorm), ``sync`` (synchronised BatchNorm), ``sync-ordered`` (and the
rank-order sum): rank r builds the model with seed 100 + r, DataParallel broadcasts rank 0's,
then two training steps on shards of the global batches. ``raise``: rank 1 raises at its
third step while rank 0 waits in the gradient allreduce; ``train``: trains until stopped.
"""
import copy
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from distributed_common import make_loader, make_model, train  # noqa: E402

import fastconv  # noqa: E402
from fastconv import distributed as dist  # noqa: E402
from fastconv.data import DataLoader  # noqa: E402
from fastconv.train import _generators, evaluate  # noqa: E402


def steps(out, batchnorm, sync_batchnorm, deterministic):
    comm = dist.world()
    me = comm.Get_rank()
    model = make_model(seed=100 + me, batchnorm=batchnorm)          # differs on every rank until the broadcast
    dp = dist.DataParallel(model, sync_batchnorm=sync_batchnorm, deterministic=deterministic,
                           bucket_mb=0.0001)   # one bucket per layer, started during backward
    after_bcast = model.state_dict()
    loader = dp.shard(make_loader())
    grads, losses = train(model, loader, dp.distribute)
    dp.check_in_sync()
    copied = copy.deepcopy(model)       # an ordinary 1-process model, e.g. for fold_batchnorm
    xb, yb = next(iter(make_loader()))
    copied_grads, _ = train(copied, [(xb, yb)])
    plain = make_model(seed=0, batchnorm=batchnorm)
    plain.load_state_dict(model.state_dict())
    for (_, g), (_, h) in zip(_generators(plain), _generators(model)):     # Dropout's
        g.bit_generator.state = h.bit_generator.state
    for a, b in zip(copied_grads, train(plain, [(xb, yb)])[0]):
        assert np.array_equal(a, b), "a copy of a DataParallel model must train on its own"
    loss_sums = [dp.sum_over_ranks(s, n) for s, n in losses]
    # evaluation on batches of 5, 5 and 1 images: rank 1 has no share of the last one
    xe, ye = make_loader().x[:11], make_loader().y[:11]
    test_loss, test_acc = evaluate(model, dp.shard(DataLoader(xe, ye, 5, dtype=np.float64)))
    shard_sizes = comm.allgather(len(losses) and losses[0][1])
    arrays = {f"bcast/{k}": v for k, v in after_bcast.items()}
    arrays.update({f"grad/{i}": g for i, g in enumerate(grads)})
    arrays.update({f"state/{k}": v for k, v in model.state_dict().items()})
    np.savez(os.path.join(out, f"rank{me}.npz"), shard_sizes=np.array(shard_sizes),
             losses=np.array(loss_sums), test=np.array([test_loss, test_acc]), started_in_backward=dp.stats["started_in_backward"],
             buckets=dp.stats["buckets"], **arrays)


def fail(mode):
    comm = dist.world()
    model = make_model(seed=0)
    dp = dist.DataParallel(model)

    def maybe_raise(step):
        if mode == "raise" and comm.Get_rank() == 1 and step == 2:
            raise RuntimeError("rank 1 fails on purpose at step 2")
        if mode == "train" and comm.Get_rank() == 0 and step == 2:
            print("training", flush=True)     # the test presses Ctrl-C now
    with dist.stop_all_on_error():
        train(model, dp.shard(make_loader(batches=1000)), dp.distribute, on_step=maybe_raise)


if __name__ == "__main__":
    fastconv.set_num_threads(1)
    mode, out = sys.argv[1], sys.argv[2]
    if mode in ("raise", "train"):
        fail(mode)
    else:
        steps(out, batchnorm=mode != "plain", sync_batchnorm="sync" in mode,
              deterministic="ordered" in mode)
