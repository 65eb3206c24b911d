"""fastconv.summary: shapes, parameters, multiply-adds and receptive fields (the notes' formula
r_out = r_in + (k - 1) * j_in, j_out = j_in * s)."""

import pytest

import fastconv
from fastconv import nn
from fastconv.models import MODELS, get_model
from fastconv.summary import receptive_field, summary


pytestmark = pytest.mark.usefixtures("layer_test_backend")


def _rows(s):
    return {r["name"]: r for r in s.rows}


def test_lenet5_table(capsys):
    s = fastconv.summary(get_model("lenet5"), (1, 28, 28))
    printed = capsys.readouterr().out
    assert printed.strip() == str(s).strip()
    rows = _rows(s)
    assert rows["conv1"]["output_shape"] == (1, 6, 28, 28)
    assert rows["conv1"]["params"] == 6 * 25 + 6
    assert rows["conv1"]["macs"] == 6 * 1 * 25 * 28 * 28
    assert rows["conv2"]["macs"] == 16 * 6 * 25 * 10 * 10
    assert rows["fc1"]["macs"] == 400 * 120
    assert s.total_params == 61_706
    assert s.total_macs == 117_600 + 240_000 + 48_000 + 10_080 + 840
    # Receptive field (size, jump, start): conv 5 -> 5; pool 2/2 -> 6, jump 2; conv 5 -> 14;
    # pool -> 16, jump 4; flatten of the 5x5 map -> 16 + 4*4 = 32: every output sees 32x32.
    assert rows["conv1"]["rf"] == ((5, 1, 0.0),) * 2
    assert rows["pool1"]["rf"] == ((6, 2, 0.5),) * 2
    assert rows["conv2"]["rf"] == ((14, 2, 4.5),) * 2
    assert rows["pool2"]["rf"] == ((16, 4, 5.5),) * 2
    assert s.receptive_field == ((32, 20, 13.5),) * 2
    text = str(s)
    for piece in ("Layer (type)", "Output Shape", "Param #", "Mult-Adds", "conv1 (Conv2d)",
                  "Total params: 61,706", "(1, 6, 28, 28)", "5 / 1 / 0"):
        assert piece in text


def test_three_3x3_convs_see_7x7():
    """The notes (VGG): three stacked 3x3 stride-1 convs have a 7x7 receptive field."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1),
                        nn.Conv2d(2, 2, 3, padding=1))
    assert receptive_field(net, (1, 16, 16)) == ((7, 1, 0.0),) * 2
    strided = nn.Sequential(nn.Conv2d(1, 1, 3, stride=2), nn.Conv2d(1, 1, 3, stride=2))
    # r = 3 + 2*2 = 7, j = 4, start = 1 + 1*2 = 3.
    assert receptive_field(strided, (1, 15, 15)) == ((7, 4, 3.0),) * 2


def test_rectangular_kernel_and_zero_pad():
    net = nn.Sequential(nn.ZeroPad2d((0, 0, 2, 2)), nn.Conv2d(1, 1, (5, 3)))
    rf = receptive_field(net, (1, 8, 8))
    assert rf == ((5, 1, 0.0), (3, 1, 1.0))
    assert "5x3 / 1x1 / 0,1" in str(summary(net, (1, 8, 8), print_fn=None))


def test_branches_take_the_largest_field():
    from fastconv.models.googlenet import Inception
    block = Inception(3, 2, 2, 2, 2, 2, 2)           # branches see 1, 3, 5 and 3 pixels
    s = summary(block, (3, 8, 8), print_fn=None)
    assert s.receptive_field == ((5, 1, 0.0),) * 2
    assert s.output_shape == (1, 8, 8, 8)
    res = get_model("resnet20")
    s = summary(res, (1, 28, 28), print_fn=None)
    rows = _rows(s)
    assert rows["layer1.0"]["type"] == "add" and rows["layer1.0"]["rf"][0][0] == 7
    # Stem 3; stage 1: six 3x3 convs at jump 1 (+12); stage 2: the strided conv adds 2 at
    # jump 1, then five convs at jump 2 (+20); stage 3: 4, then five at jump 4 (+40).
    assert rows["layer3.2.activation"]["rf"][0][:2] == (3 + 12 + 2 + 20 + 4 + 40, 4)
    assert rows["layer3.2.activation"]["output_shape"] == (1, 64, 7, 7)
    assert s.total_params == res.num_parameters()


@pytest.mark.parametrize("name", MODELS)
def test_every_model_summarises(name):
    model = get_model(name)
    s = summary(model, (1, 28, 28), print_fn=None)
    assert s.output_shape == (1, 10)
    assert s.total_params == model.num_parameters()
    assert sum(r["params"] for r in s.rows) == model.num_parameters()
    assert s.total_macs > 0 and s.receptive_field is not None
    assert model.training                                  # summary used a copy in eval mode


def test_summary_batch_and_bad_shape():
    model = get_model("lenet5")
    assert summary(model, (4, 1, 28, 28), print_fn=None).total_macs == 4 * 416_520
    with pytest.raises(ValueError, match="input_shape"):
        summary(model, (28,), print_fn=None)
    with pytest.raises(TypeError):
        summary("lenet5", (1, 28, 28), print_fn=None)
