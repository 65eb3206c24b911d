"""Data-parallel training over MPI: ``mpirun -n 2`` runs compared with one process.

The MPI tests skip (with the reason) when mpirun or mpi4py is missing, unless
FASTCONV_REQUIRE_MPI=1 (set by CI, which installs them): then they fail instead.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from distributed_common import BATCH, make_loader, make_model, train
from fastconv import distributed as dist
from fastconv.data import DataLoader
from fastconv.train import evaluate, read_checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))
# The folder this process imported fastconv from (the installed package, or a checkout with
# its kernels built in place): the ranks must import the same one.
FASTCONV_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(dist.__file__)))


def _mpirun(n):
    """The command prefix that starts n processes, or skip/fail when MPI is not installed."""
    exe = shutil.which("mpirun") or shutil.which("mpiexec")
    missing = [what for what, ok in (("an MPI launcher (mpirun)", exe),
                                     ("mpi4py", dist.available())) if not ok]
    if missing:
        why = (f"{' and '.join(missing)} not installed (apt-get install openmpi-bin "
               f"libopenmpi-dev; pip install \"fastconv[mpi]\")")
        if os.environ.get("FASTCONV_REQUIRE_MPI") == "1":
            pytest.fail(f"FASTCONV_REQUIRE_MPI=1 but {why}")
        pytest.skip(why)
    cmd = [exe, "-n", str(n)]
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    if "Open MPI" in version or "OpenRTE" in version:
        cmd += ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return cmd


def _run(cmd, timeout=300, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        p for p in (FASTCONV_ROOT, os.environ.get("PYTHONPATH")) if p))
    # outside the checkout: `python -m fastconv` puts the current folder first on sys.path
    kwargs.setdefault("cwd", tempfile.gettempdir())
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


def _worker(mode, tmp_path):
    out = tmp_path / mode
    out.mkdir()
    r = _run(_mpirun(2) + [sys.executable, os.path.join(HERE, "mpi_worker.py"), mode, str(out)])
    assert r.returncode == 0, r.stdout + r.stderr
    return [dict(np.load(out / f"rank{k}.npz")) for k in range(2)]


def _one_process(batchnorm):
    """What the 2 ranks must reproduce: rank 0's model trained on the global batches."""
    model = make_model(seed=100, batchnorm=batchnorm)
    grads, losses = train(model, make_loader())
    return model, grads, losses


# ----------------------------------------------------------------------- without MPI

def test_shards_cover_the_batch_in_order_and_differ_by_at_most_one():
    for n, p in ((11, 2), (64, 3), (5, 5), (7, 4)):
        bounds = [dist._shard_bounds(n, p, r) for r in range(p)]
        assert [lo for lo, _ in bounds] == [0] + [hi for _, hi in bounds[:-1]]
        assert bounds[-1][1] == n
        sizes = [hi - lo for lo, hi in bounds]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_sharded_loader_needs_an_image_per_process():
    class Group:
        size, rank = 4, 0
    with pytest.raises(ValueError, match="batch_size 3 is smaller than the 4 processes"):
        dist.ShardedLoader(DataLoader(np.zeros((6, 1, 2, 2)), np.zeros(6), 3), Group())


# ----------------------------------------------------------------------- mpirun -n 2

@pytest.mark.parametrize("mode", ["plain", "sync", "sync-ordered"])
def test_two_processes_compute_what_one_process_computes(mode, tmp_path):
    """Broadcast of rank 0's state, shards of 6 + 5 images, gradients summed (and weighted by
    the shard sizes), Dropout masks of the global batch, and with synchronised BatchNorm the
    global batch statistics: two steps equal one process's two steps on the whole batches,
    and a sharded evaluation (whose last batch of 1 image leaves rank 1 out) equals one's."""
    ranks = _worker(mode, tmp_path)
    model, grads, losses = _one_process(batchnorm=mode != "plain")
    start = make_model(seed=100, batchnorm=mode != "plain").state_dict()
    other = make_model(seed=101, batchnorm=mode != "plain").state_dict()
    for r, res in enumerate(ranks):
        assert list(res["shard_sizes"]) == [6, 5]
        assert int(res["buckets"]) > 1 and int(res["started_in_backward"]) > 0
        for k, v in start.items():     # rank 1 built other weights; it now holds rank 0's
            np.testing.assert_array_equal(res[f"bcast/{k}"], v, err_msg=f"rank {r} {k}")
        assert any(not np.array_equal(other[k], v) for k, v in start.items())
        for i, g in enumerate(grads):
            np.testing.assert_allclose(res[f"grad/{i}"], g, rtol=1e-10, atol=1e-13,
                                       err_msg=f"rank {r} gradient {i}")
        for k, v in model.state_dict().items():     # parameters and BN running statistics
            np.testing.assert_allclose(res[f"state/{k}"], v, rtol=1e-10, atol=1e-13,
                                       err_msg=f"rank {r} {k}")
        np.testing.assert_allclose(res["losses"], losses, rtol=1e-12)
        loader = make_loader()
        want = evaluate(model, DataLoader(loader.x[:11], loader.y[:11], 5, dtype=np.float64))
        np.testing.assert_allclose(res["test"], want, rtol=1e-10)
    for k in ranks[0]:      # every rank ends with the same bits
        np.testing.assert_array_equal(ranks[0][k], ranks[1][k], err_msg=k)


def test_per_process_batchnorm_differs_from_global_batch_statistics(tmp_path):
    """The default keeps each rank's own BN statistics: not the 1-process numbers (the
    synchronised form is what makes them equal), but the same on both ranks."""
    ranks = _worker("perrank", tmp_path)
    model, _, _ = _one_process(batchnorm=True)
    got, want = ranks[0]["state/1.running_mean"], model.state_dict()["1.running_mean"]
    assert not np.allclose(got, want, rtol=1e-6)
    np.testing.assert_array_equal(ranks[0]["state/0.weight"], ranks[1]["state/0.weight"])


def test_a_failing_rank_stops_the_job_with_its_message(tmp_path):
    """Rank 1 raises while rank 0 waits in the gradient allreduce: MPI_Abort ends both
    within seconds, after rank 1's traceback."""
    t0 = time.perf_counter()
    r = _run(_mpirun(2) + [sys.executable, os.path.join(HERE, "mpi_worker.py"), "raise", "-"],
             timeout=120)
    elapsed = time.perf_counter() - t0
    assert r.returncode != 0
    text = r.stdout + r.stderr
    assert "rank 1 of 2 failed, stopping all 2 ranks" in text and "fails on purpose" in text, text
    assert elapsed < 60, f"the job took {elapsed:.0f} s to stop"


def test_ctrl_c_stops_every_rank_with_a_message():
    """Ctrl-C reaches mpirun, which sends SIGTERM to the ranks: the whole job stops, with a
    non-zero status, within seconds. Each rank prints why it stops, but mpirun may kill a rank
    before it gets to print (on a loaded machine it did), so only the stop is asserted here."""
    cmd = _mpirun(2) + [sys.executable, os.path.join(HERE, "mpi_worker.py"), "train", "-"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=FASTCONV_ROOT)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env, cwd=tempfile.gettempdir()) as proc:
        try:
            assert proc.stdout.readline().strip() == "training"
            proc.send_signal(signal.SIGINT)
            t0 = time.perf_counter()
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode != 0
    assert time.perf_counter() - t0 < 30, err


def test_cli_checkpoint_of_two_processes_resumes_in_one(tmp_path):
    """`mpirun -n 2 fastconv train` for 1 epoch, `fastconv train --resume` to epoch 2 in one
    process: the history equals a 2-epoch 1-process run (float64), one log, one writer."""
    args = ["train", "--model", "lenet5", "--dataset", "fashion-mnist-subset", "--limit", "256",
            "--limit-test", "200", "--batch-size", "32", "--dtype", "float64", "--no-progress",
            "--schedule", "constant"]   # (onecycle depends on --epochs)
    fc = [sys.executable, "-m", "fastconv"]
    mpi_ck, one_ck = tmp_path / "mpi.npz", tmp_path / "one.npz"
    two = _run(_mpirun(2) + fc + args + ["--epochs", "1", "--out", str(tmp_path / "mpi"),
                                         "--checkpoint", str(mpi_ck)])
    assert two.returncode == 0, two.stdout + two.stderr
    assert two.stdout.count("epoch   1/1") == 1, two.stdout      # rank 0 logs alone
    assert "world size 2" in two.stdout
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]   # no second writer's leftovers
    resumed = _run(fc + args + ["--epochs", "2", "--resume", "--out", str(tmp_path / "mpi"),
                                "--checkpoint", str(mpi_ck)])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    one = _run(fc + args + ["--epochs", "2", "--out", str(tmp_path / "one"),
                            "--checkpoint", str(one_ck)])
    assert one.returncode == 0, one.stdout + one.stderr
    got, want = (read_checkpoint(p)["history"] for p in (mpi_ck, one_ck))
    assert len(got["train_loss"]) == 2
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-9, err_msg=key)


def test_info_shows_the_mpi_library_and_world_size():
    r = _run(_mpirun(2) + [sys.executable, "-m", "fastconv", "info"])
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip().startswith("MPI")]
    assert len(lines) == 2 and all("world size 2" in ln for ln in lines), r.stdout
