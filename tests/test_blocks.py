"""The blocks the models repeat live in fastconv.nn (BasicBlock, ZeroPadShortcut, Inception);
fastconv.models defines no layer of its own; one ``_pair`` helper serves the package."""
import ast
import inspect
import pathlib
import re

import numpy as np
import pytest

import fastconv
import fastconv.models
from fastconv import nn
from fastconv.gradcheck import gradcheck

pytestmark = pytest.mark.usefixtures("layer_test_backend")

PACKAGE = pathlib.Path(fastconv.__file__).parent


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("make,shape", [
    (lambda: nn.BasicBlock(3, 3), (2, 3, 4, 4)),
    (lambda: nn.BasicBlock(2, 4, stride=2), (2, 2, 5, 5)),
    (lambda: nn.BasicBlock(2, 4, stride=2, shortcut="A"), (2, 2, 5, 5)),
    (lambda: nn.BasicBlock(2, 4, stride=2, shortcut="conv3x3"), (2, 2, 4, 4)),
    (lambda: nn.ZeroPadShortcut(2, 5, 2), (2, 2, 5, 4)),
    (lambda: nn.Inception(3, 2, 2, 3, 2, 2, 2), (2, 3, 4, 4)),
], ids=["basic", "basic-B", "basic-A", "basic-conv3x3", "zeropad-shortcut", "inception"])
def test_blocks_gradcheck(make, shape, mode, rng):
    with nn.init.seeded(0):
        block = make()
    block.train(mode == "train")
    report = gradcheck(block, rng.standard_normal(shape))
    assert report.ok, str(report)


def test_zero_pad_shortcut_forward():
    x = np.arange(2 * 2 * 3 * 3, dtype=np.float32).reshape(2, 2, 3, 3)
    y = nn.ZeroPadShortcut(2, 6, 2)(x)
    assert y.shape == (2, 6, 2, 2)
    np.testing.assert_array_equal(y[:, 2:4], x[:, :, ::2, ::2])     # 2 zero channels before
    assert not y[:, :2].any() and not y[:, 4:].any()


def test_block_shapes_and_shortcuts():
    x = np.zeros((2, 8, 6, 6), np.float32)
    assert nn.BasicBlock(8, 16, stride=2)(x).shape == (2, 16, 3, 3)
    assert nn.BasicBlock(8, 8).shortcut is None
    assert isinstance(nn.BasicBlock(8, 16, 2, shortcut="A").shortcut, nn.ZeroPadShortcut)
    assert nn.BasicBlock(8, 16, 2, shortcut="conv3x3").shortcut[0].kernel_size == (3, 3)
    block = nn.Inception(8, 1, 2, 3, 2, 4, 5)
    assert block(x).shape == (2, 1 + 3 + 4 + 5, 6, 6) and block.out_channels == 13
    with pytest.raises(ValueError, match="BasicBlock: shortcut must be one of"):
        nn.BasicBlock(8, 16, 2, shortcut="C")


def test_models_build_from_the_nn_blocks():
    resnet = fastconv.models.resnet20(shortcut="A")
    blocks = [m for m in resnet.modules() if isinstance(m, nn.BasicBlock)]
    assert len(blocks) == 9 and any(isinstance(b.shortcut, nn.ZeroPadShortcut) for b in blocks)
    googlenet = fastconv.models.googlenet()
    assert sum(isinstance(m, nn.Inception) for m in googlenet.modules()) == 9
    # the names stay importable from where they were defined before
    assert fastconv.models.BasicBlock is nn.BasicBlock
    assert fastconv.models.Inception is nn.Inception
    assert fastconv.models.ZeroPadShortcut is nn.ZeroPadShortcut


def _class_defs(path):
    tree = ast.parse(path.read_text())
    return [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]


def test_models_define_no_layers():
    """Every class in fastconv/models/ is a whole model (an nn.Sequential of nn layers):
    blocks and layers belong in fastconv.nn, with their tests."""
    for path in sorted((PACKAGE / "models").glob("*.py")):
        module = __import__(f"fastconv.models.{path.stem}", fromlist=["_"])
        for node in _class_defs(path):
            cls = getattr(module, node.name)
            assert issubclass(cls, nn.Sequential), f"{path.name}: {node.name}"
            assert inspect.getmodule(cls) is module
            assert not any(name in vars(cls) for name in ("forward", "backward")), \
                f"{path.name}: {node.name} computes something itself: make it a layer in nn"


def test_one_pair_helper_in_the_package():
    defs = [f"{p.relative_to(PACKAGE)}" for p in PACKAGE.rglob("*.py")
            for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, ast.FunctionDef)
            and re.fullmatch(r"_*(as_|to_|make_)?pair", node.name)]
    assert defs == ["functional.py"], defs


@pytest.mark.parametrize("make,match", [
    (lambda: nn.Conv2d(1, 2, 0), "Conv2d: kernel_size must be >= 1"),
    (lambda: nn.Conv2d(1, 2, 3, stride=(1, 0)), "Conv2d: stride must be >= 1"),
    (lambda: nn.Conv2d(1, 2, 3, padding=-1), "Conv2d: padding must be >= 0"),
    (lambda: nn.MaxPool2d(2, stride=0), "MaxPool2d: stride must be >= 1"),
    (lambda: nn.AvgPool2d(2, padding=-1), "AvgPool2d: padding must be >= 0"),
])
def test_layers_check_their_sizes_when_built(make, match):
    with pytest.raises(ValueError, match=match):
        make()
    with pytest.raises(TypeError, match="Conv2d: kernel_size must be an int or a pair"):
        nn.Conv2d(1, 2, (3, 3, 3))
    with pytest.raises(TypeError, match="MaxPool2d: kernel_size must be an int or a pair"):
        nn.MaxPool2d(2.0)
