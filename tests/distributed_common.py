"""The model, data and loop shared by tests/test_distributed.py (one process) and
tests/mpi_worker.py (under mpirun), so both sides compute the same thing."""
import numpy as np

from fastconv import nn
from fastconv.data import DataLoader
from fastconv.optim import SGD

BATCH = 11          # odd: 2 processes get shards of 6 and 5 images


def make_model(seed, batchnorm=True):
    """conv - (BN) - ReLU - pool - Dropout - linear, float64: every kind of layer state."""
    with nn.init.seeded(seed):
        bn = [nn.BatchNorm2d(4, dtype=np.float64)] if batchnorm else []
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, dtype=np.float64), *bn, nn.ReLU(),
                             nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.3),
                             nn.Linear(64, 5, dtype=np.float64))


def make_loader(batches=2):
    rng = np.random.default_rng(7)
    n = BATCH * batches
    x = rng.integers(0, 256, (n, 3, 8, 8)).astype(np.uint8)
    y = rng.integers(0, 5, n)
    return DataLoader(x, y, BATCH, shuffle=True, seed=3, dtype=np.float64)


def train(model, loader, wrap=lambda opt: opt, on_step=None):
    """SGD with momentum over every batch of ``loader``; returns the gradients used by the
    last step (after a distributed step: summed over the processes) and the losses."""
    optimizer = wrap(SGD(model.parameters(), lr=0.1, momentum=0.9))
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for i, (xb, yb) in enumerate(loader):
        optimizer.zero_grad()
        loss = loss_fn.forward(model(xb), yb)
        model.backward_params(loss_fn.backward())
        optimizer.step()
        losses.append((float(loss) * len(yb), len(yb)))
        if on_step is not None:
            on_step(i)
    return [p.grad.copy() for p in model.parameters()], losses
