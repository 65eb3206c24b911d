"""Whole models: training steps and inference.

* training step: forward, cross-entropy loss, backward and one SGD update, at the models'
  usual training batch: LeNet-5 (batch 64, 1x28x28) and ResNet-20 (batch 128, 3x32x32);
* inference: the eval-mode forward pass (BN with its running statistics), ResNet-20 on a
  batch of 128 (throughput) and LeNet-5 on one image (latency). Each engine runs it twice:
  as the model is (``model.eval()``: "fastconv", "torch"), and through its own inference
  path, "fastconv:fused" (``nn.fuse_for_inference``: BN folded into the convolutions, bias,
  ReLU and the residual add in the conv kernel's epilogue) and "torch:jit"
  (``torch.jit.optimize_for_inference``: BN folded, oneDNN convolutions with fused ReLU).
  Both run without what a backward pass would need: fastconv under ``fastconv.no_grad()``,
  PyTorch under ``torch.inference_mode()``.

fastconv's side uses the public layer API (``fastconv.models``,
``fastconv.nn.CrossEntropyLoss``, ``fastconv.optim.SGD``). PyTorch's side builds the same
architecture (:mod:`fastconv.benchmark.torch_impl`) and runs it on the same batch; both
report their parameter counts, and the run warns when the two differ.
"""
from dataclasses import dataclass, field

import numpy as np

from . import torch_impl

# name -> (batch, input shape of one image)
MODELS = {"lenet5": (64, (1, 28, 28)), "resnet20": (128, (3, 32, 32))}
INFERENCE_BATCH = {"resnet20": 128, "lenet5": 1}   # throughput and latency
IMPLS = ("fastconv", "torch")                        # training step
INFER_IMPLS = ("fastconv", "fastconv:fused", "torch", "torch:jit")   # inference
OWN_INFERENCE_PATH = ("fastconv:fused", "torch:jit")   # each engine's inference path
TASKS = {"train": "train_step", "infer": "inference"}   # kind -> id prefix


@dataclass
class ModelCase:
    model: str
    impl: str                       # one of IMPLS (train) or INFER_IMPLS (infer)
    batch: int
    image_shape: tuple
    build: object = field(repr=False, default=None)
    kind: str = "train"             # "train" (a training step) or "infer" (eval forward)

    @property
    def id(self):
        return f"{TASKS[self.kind]}:{self.model}:{self.impl}"


def model_inputs(batch, image_shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *image_shape), dtype=np.float32)
    labels = rng.integers(0, 10, size=batch)
    return x, labels


def fastconv_train_step(model_name, x, labels, lr=0.01, momentum=0.9):
    """(step, n_params) for fastconv's model ``model_name`` on images ``x`` (N, C, H, H)."""
    from .. import nn, optim
    from ..models import get_model
    model = get_model(model_name, in_channels=x.shape[1], input_size=x.shape[2])
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    params = model.parameters()
    opt = optim.SGD(params, lr=lr, momentum=momentum)

    def step():
        opt.zero_grad()                             # as PyTorch's step
        logits = model(x)
        loss = loss_fn.forward(logits, labels)
        model.backward_params(loss_fn.backward())   # no dL/dx of the images, as PyTorch
        opt.step()
        return loss

    return step, int(sum(p.data.size for p in params))


def fastconv_inference(model_name, x, fused=False):
    """(forward, n_params): ``forward()`` runs fastconv's model ``model_name`` in eval mode,
    under ``no_grad``, on the images ``x`` (N, C, H, H) and returns the logits; with
    ``fused``, the model made by ``nn.fuse_for_inference`` (n_params: the unfused model's,
    the architecture compared)."""
    from .. import nn
    from ..models import get_model
    model = get_model(model_name, in_channels=x.shape[1], input_size=x.shape[2])
    model.eval()
    net = nn.fuse_for_inference(model) if fused else model

    @nn.no_grad()          # as PyTorch's side runs under torch.inference_mode
    def forward():
        return net(x)
    return forward, int(sum(p.data.size for p in model.parameters()))


def model_cases(batch_cap=None, with_torch=True, kind="train"):
    """The training-step (``kind="train"``) or inference (``"infer"``) cases, fastconv
    first; ``batch_cap`` limits the batch (``--quick``)."""
    cases = []
    for name, (batch, image_shape) in MODELS.items():
        if kind == "infer":
            batch = INFERENCE_BATCH[name]
        if batch_cap is not None:
            batch = min(batch, batch_cap)
        for impl in IMPLS if kind == "train" else INFER_IMPLS:
            if impl.startswith("torch") and not with_torch:
                continue
            if kind == "train":
                build = fastconv_train_step if impl == "fastconv" else torch_impl.train_step
            else:
                build = fastconv_inference if impl.startswith("fastconv") else torch_impl.inference
            cases.append(ModelCase(name, impl, batch, image_shape, build, kind))
    return cases
