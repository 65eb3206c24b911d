"""The layer suite every anchor and the project are measured on (NCHW, float32).

Shipped inside the package so that ``fastconv bench`` works after a plain ``pip install``;
``bench/`` (the pytest-benchmark suite and the performance targets) uses it too.

conv: (name, N, C, H, W, K, R, S, stride, pad)
depthwise conv: (name, N, C, H, W, R, S, stride, pad), groups = K = C
dilated conv: (name, N, C, H, W, K, R, S, stride, pad, dilation)
pool: (name, kind, N, C, H, W, k, stride, pad)
bn:   (name, N, C, H, W)   (H = W = 0 means BatchNorm1d on (N, C))
"""

CONV = [
    ("lenet_c1",      64,   1, 28, 28,   6, 5, 5, 1, 2),
    ("lenet_c2",      64,   6, 14, 14,  16, 5, 5, 1, 0),
    ("resnet20_s1",  128,  16, 32, 32,  16, 3, 3, 1, 1),
    ("resnet20_s2",  128,  32, 16, 16,  32, 3, 3, 1, 1),
    ("resnet20_s3",  128,  64,  8,  8,  64, 3, 3, 1, 1),
    ("resnet20_down",128,  16, 32, 32,  32, 3, 3, 2, 1),
    ("alexnet_c1",    64,   3, 32, 32,  64, 3, 3, 2, 1),
    ("vgg_c3",        32,  64, 32, 32, 128, 3, 3, 1, 1),
    ("nin_1x1",       64, 192, 16, 16, 160, 1, 1, 1, 0),
]

# MobileNet's depthwise 3x3 layers on 28x28 Fashion-MNIST (fastconv.models.mobilenet)
DEPTHWISE = [
    ("mobilenet_dw1", 64,  32, 28, 28, 3, 3, 1, 1),
    ("mobilenet_dw2", 64,  64, 28, 28, 3, 3, 2, 1),
    ("mobilenet_dw5", 64, 256,  7,  7, 3, 3, 1, 1),
]

# Dilated ("atrous") 3x3 layers as in DeepLab's last stages: the receptive field grows
# without pooling; padding = dilation keeps the spatial size.
DILATED = [
    ("atrous_d2",     32,  64, 32, 32,  64, 3, 3, 1, 2, 2),
    ("atrous_d4",     32, 128, 16, 16, 128, 3, 3, 1, 4, 4),
]

POOL = [
    ("lenet_max2",   "max", 64,   6, 28, 28, 2, 2, 0),
    ("vgg_max2",     "max", 128, 64, 32, 32, 2, 2, 0),
    ("nin_max3s2",   "max", 64,  96, 32, 32, 3, 2, 1),
    ("avg2",         "avg", 128, 64, 32, 32, 2, 2, 0),
    ("nin_avg3s2",   "avg", 64, 192, 16, 16, 3, 2, 1),
    ("global_avg8",  "avg", 128, 64,  8,  8, 8, 1, 0),
]

BN = [
    ("bn2d_s1", 128, 16, 32, 32),
    ("bn2d_s3", 128, 64,  8,  8),
    ("bn2d_vgg", 32, 128, 32, 32),
    ("bn1d_fc", 128, 120, 0, 0),
]


def conv_out(H, W, R, S, stride, pad, dilation=1):
    """Output height and width; a dilated window spans ``dilation * (R - 1) + 1`` rows."""
    return ((H + 2 * pad - dilation * (R - 1) - 1) // stride + 1,
            (W + 2 * pad - dilation * (S - 1) - 1) // stride + 1)


def conv_flops(N, C, H, W, K, R, S, stride, pad, groups=1, dilation=1):
    """FLOPs of one forward pass (a multiply-add counts as 2); C / groups channels per output."""
    P, Q = conv_out(H, W, R, S, stride, pad, dilation)
    return 2 * N * K * (C // groups) * R * S * P * Q
