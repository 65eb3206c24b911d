"""Whole-model training steps: forward, cross-entropy loss, backward and one SGD update.

The two models of the performance targets, at their usual training batch: LeNet-5 (batch 64, 1x28x28) and
ResNet-20 (batch 128, 3x32x32). fastconv's side uses the public layer API
(``fastconv.models``, ``fastconv.nn.CrossEntropyLoss``, ``fastconv.optim.SGD``); until
those modules exist the case reports itself unavailable. PyTorch's side builds the same
architecture (:mod:`fastconv.benchmark.torch_impl`); both report their parameter counts so
that a mismatch of the two architectures shows in the JSON.
"""
import importlib
import inspect
from dataclasses import dataclass, field

import numpy as np

from . import torch_impl

# name -> (batch, input shape of one image)
MODELS = {"lenet5": (64, (1, 28, 28)), "resnet20": (128, (3, 32, 32))}
IMPLS = ("fastconv", "torch")


@dataclass
class ModelCase:
    model: str
    impl: str                       # "fastconv" or "torch"
    batch: int
    image_shape: tuple
    build: object = field(repr=False)

    @property
    def id(self):
        return f"train_step:{self.model}:{self.impl}"


def model_inputs(batch, image_shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *image_shape), dtype=np.float32)
    labels = rng.integers(0, 10, size=batch)
    return x, labels


def fastconv_train_step(model_name, x, labels, lr=0.01, momentum=0.9):
    """(step, n_params) for fastconv's model; ImportError while the layer API is missing."""
    models = importlib.import_module("fastconv.models")
    nn = importlib.import_module("fastconv.nn")
    optim = importlib.import_module("fastconv.optim")
    if not hasattr(models, model_name):
        raise ImportError(f"fastconv.models has no {model_name}() yet")
    builder = getattr(models, model_name)
    accepted = inspect.signature(builder).parameters
    shape = {"in_channels": x.shape[1], "input_size": x.shape[2]}   # as the images are
    model = builder(**{k: v for k, v in shape.items() if k in accepted})
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    params = model.parameters()
    opt = optim.SGD(params, lr=lr, momentum=momentum)

    def step():
        logits = model(x)
        loss = loss_fn.forward(logits, labels)
        model.zero_grad()
        model.backward_params(loss_fn.backward())   # no dL/dx of the images, as PyTorch
        opt.step()
        return loss

    return step, int(sum(p.data.size for p in params))


def model_cases(batch_cap=None, with_torch=True):
    """The training-step cases, fastconv first; ``batch_cap`` limits the batch (``--quick``)."""
    cases = []
    for name, (batch, image_shape) in MODELS.items():
        if batch_cap is not None:
            batch = min(batch, batch_cap)
        for impl in IMPLS:
            if impl == "torch" and not with_torch:
                continue
            build = fastconv_train_step if impl == "fastconv" else torch_impl.train_step
            cases.append(ModelCase(name, impl, batch, image_shape, build))
    return cases
