"""PyTorch's CPU ops and models on the same data: what fastconv is compared against.

PyTorch is optional and never a dependency of fastconv: every function here imports it
lazily, and :func:`load` raises ``ImportError`` when it is missing, which the runner reports
as "unavailable". The calls are PyTorch's own kernels with no autograd bookkeeping (the
input tensors do not require grad), so both engines do the same work:

* conv forward ``torch.nn.functional.conv2d``; conv backward
  ``torch.ops.aten.convolution_backward`` (dx, dw and db, as ``F.conv2d_backward``);
* pooling forward ``F.max_pool2d`` / ``F.avg_pool2d``; backward the aten ops autograd
  calls, ``max_pool2d_with_indices_backward`` (with the indices saved by the forward, which
  is how PyTorch trains; fastconv recomputes the argmax from x instead) and
  ``avg_pool2d_backward``;
* batch norm forward ``F.batch_norm(training=True)``; backward
  ``aten.native_batch_norm_backward`` with the statistics saved by the forward.

``torch.from_numpy`` shares the NumPy buffers: no copy, the very same numbers.
"""
_torch = None


def load():
    """The torch module (imported once); ImportError when PyTorch is not installed."""
    global _torch
    if _torch is None:
        try:
            import torch
        except ImportError as exc:
            raise ImportError("torch is not installed (pip install torch to compare "
                              f"with PyTorch): {exc}") from exc
        _torch = torch
    return _torch


def version():
    """PyTorch's installed version, or None; read from its metadata, without importing it."""
    from importlib import metadata
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def set_threads(n):
    """Give PyTorch the same thread count as fastconv (no-op when torch is missing)."""
    try:
        load().set_num_threads(n)
    except ImportError:
        pass


def op_call(op, layer, d):
    """The zero-argument callable running ``op`` with PyTorch on the NumPy inputs ``d``."""
    torch = load()
    aten = torch.ops.aten
    TF = torch.nn.functional
    t = {k: torch.from_numpy(v) for k, v in d.items()}
    if op.startswith("conv2d"):
        s, p, g = [layer["stride"]] * 2, [layer["pad"]] * 2, layer.get("groups", 1)
        dil = [layer.get("dilation", 1)] * 2
        if op == "conv2d_fwd":
            return lambda: TF.conv2d(t["x"], t["w"], t["b"], stride=s, padding=p, dilation=dil,
                                     groups=g)
        K = layer["K"]
        return lambda: aten.convolution_backward(t["dy"], t["x"], t["w"], [K], s, p, dil,
                                                 False, [0, 0], g, [True, True, True])
    if "pool" in op:
        k, s, p = [layer["k"]] * 2, [layer["stride"]] * 2, [layer["pad"]] * 2
        if op == "max_pool2d_fwd":
            return lambda: TF.max_pool2d(t["x"], k, s, p)
        if op == "max_pool2d_bwd":
            _, idx = aten.max_pool2d_with_indices(t["x"], k, s, p, [1, 1], False)
            return lambda: aten.max_pool2d_with_indices_backward(t["dy"], t["x"], k, s, p,
                                                                 [1, 1], False, idx)
        if op == "avg_pool2d_fwd":
            return lambda: TF.avg_pool2d(t["x"], k, s, p, count_include_pad=True)
        if op == "avg_pool2d_bwd":
            return lambda: aten.avg_pool2d_backward(t["dy"], t["x"], k, s, p, False, True, None)
    if op == "batch_norm_fwd":
        return lambda: TF.batch_norm(t["x"], t["running_mean"], t["running_var"],
                                     t["gamma"], t["beta"], training=True, momentum=0.1,
                                     eps=1e-5)
    if op == "batch_norm_bwd":
        # Statistics of the forward pass, computed on copies so d's running stats stay put.
        _, mean, invstd = aten.native_batch_norm(t["x"], t["gamma"], t["beta"],
                                                 t["running_mean"].clone(),
                                                 t["running_var"].clone(), True, 0.1, 1e-5)
        return lambda: aten.native_batch_norm_backward(
            t["dy"], t["x"], t["gamma"], t["running_mean"], t["running_var"], mean, invstd,
            True, 1e-5, [True, True, True])
    raise ValueError(f"unknown op {op!r}")


# --------------------------------------------------------------------------- models

def lenet5():
    """LeNet-5 for 1x28x28 as in the course notes (003): conv 5x5 (pad 2) 6 -> ReLU -> max 2
    -> conv 5x5 16 -> ReLU -> max 2 -> fc 400-120-84-10 with ReLU."""
    nn = load().nn
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10))


def resnet20():
    """ResNet-20 for 3x32x32 (course notes 003, He et al. 2015): conv 3x3 16 + BN + ReLU,
    three stages of three basic blocks (16, 32, 64 channels; stages 2 and 3 start with
    stride 2 and a 1x1 stride-2 conv + BN projection shortcut, option B, the default of
    ``fastconv.models.resnet20``), global 8x8 average pooling, fc 64-10."""
    torch = load()
    nn = torch.nn

    def conv3x3(c_in, c_out, stride=1):
        return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)

    class Block(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.conv1, self.bn1 = conv3x3(c_in, c_out, stride), nn.BatchNorm2d(c_out)
            self.conv2, self.bn2 = conv3x3(c_out, c_out), nn.BatchNorm2d(c_out)
            self.shortcut = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                           nn.BatchNorm2d(c_out))
                             if stride != 1 or c_in != c_out else nn.Identity())

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))

    layers = [conv3x3(3, 16), nn.BatchNorm2d(16), nn.ReLU()]
    c_in = 16
    for c_out, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(3):
            layers.append(Block(c_in, c_out, stride if i == 0 else 1))
            c_in = c_out
    layers += [nn.AvgPool2d(8), nn.Flatten(), nn.Linear(64, 10)]
    return nn.Sequential(*layers)


MODELS = {"lenet5": lenet5, "resnet20": resnet20}


def train_step(model_name, x, labels, lr=0.01, momentum=0.9):
    """(step, n_params): ``step()`` runs forward, cross-entropy, backward and an SGD update."""
    torch = load()
    model = MODELS[model_name]()
    model.train()
    xt, yt = torch.from_numpy(x), torch.from_numpy(labels.astype("int64"))
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)

    def step():
        opt.zero_grad(set_to_none=False)
        loss = loss_fn(model(xt), yt)
        loss.backward()
        opt.step()
        return loss.item()

    return step, sum(p.numel() for p in model.parameters())


def inference(model_name, x, fused=False):
    """(forward, n_params): ``forward()`` runs the model in eval mode on the images ``x``
    without autograd bookkeeping (``torch.inference_mode``), as fastconv's runs under
    ``fastconv.no_grad()``;
    with ``fused``, PyTorch's own inference path: the model scripted and passed through
    ``torch.jit.optimize_for_inference`` (BN folded into the convolutions, oneDNN
    convolutions with the ReLU fused)."""
    torch = load()
    model = MODELS[model_name]()
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    if fused:   # deprecated in favour of torch.compile, which builds C++ code at run time
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.optimize_for_inference(torch.jit.script(model))
    xt = torch.from_numpy(x)

    def forward():
        with torch.inference_mode():
            return model(xt)

    return forward, n_params
