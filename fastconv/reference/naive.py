"""Naive loops: the formulas written out one output value at a time, in float64.

The tests use them as the first oracle: they are checked on hand-made examples, then check
the NumPy reference (``fastconv.reference``) on tiny shapes, which checks the fast kernels.
Far too slow for anything else. Labels as in docs/formulas.md.

The convolution loops skip positions outside the image (x is 0 there), so for non-finite
weights or gradients use the references, which multiply the padding's zeros as the formula
does.
"""
import itertools
import math

import numpy as np

__all__ = ["naive_conv2d_forward", "naive_conv2d_backward", "naive_max_pool", "naive_avg_pool",
           "naive_batch_norm"]


# --------------------------------------------------------------------------- Convolution

def naive_conv2d_forward(x, w, b, stride, padding, dilation=(1, 1), groups=1):
    """(conv.fwd) with explicit loops; float64. With groups (conv.groups), output channel k
    reads the input channels g*C/G + c of its group g = k // (K/G) only (c < C/G, w's axis
    1); with dilation (dh, dw) tap (r, s) reads the input r*dh, s*dw from the window's corner."""
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    (sh, sw), (ph, pw), (dh, dw_) = stride, padding, dilation
    P = (H + 2 * ph - dh * (R - 1) - 1) // sh + 1                       # (conv.out)
    Q = (W + 2 * pw - dw_ * (S - 1) - 1) // sw + 1
    y = np.zeros((N, K, P, Q))
    for n, k, p, q in itertools.product(range(N), range(K), range(P), range(Q)):
        total = 0.0 if b is None else b[k]
        g = k // (K // groups)
        for c, r, s in itertools.product(range(Cg), range(R), range(S)):
            ih, iw = p * sh + r * dh - ph, q * sw + s * dw_ - pw
            if 0 <= ih < H and 0 <= iw < W:           # zero padding
                total += w[k, c, r, s] * x[n, g * Cg + c, ih, iw]
        y[n, k, p, q] = total
    return y


def naive_conv2d_backward(dy, x, w, stride, padding, dilation=(1, 1), groups=1):
    """(conv.bwd) with explicit loops: every product of the forward sends dy back to both
    of its factors; float64. groups and dilation as in :func:`naive_conv2d_forward`."""
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    (sh, sw), (ph, pw), (dh, dw_) = stride, padding, dilation
    P, Q = dy.shape[2:]
    dx, dw, db = np.zeros(x.shape), np.zeros(w.shape), np.zeros(K)
    for n, k, p, q in itertools.product(range(N), range(K), range(P), range(Q)):
        db[k] += dy[n, k, p, q]
        g = k // (K // groups)
        for c, r, s in itertools.product(range(Cg), range(R), range(S)):
            ih, iw = p * sh + r * dh - ph, q * sw + s * dw_ - pw
            if 0 <= ih < H and 0 <= iw < W:
                dw[k, c, r, s] += dy[n, k, p, q] * x[n, g * Cg + c, ih, iw]
                dx[n, g * Cg + c, ih, iw] += dy[n, k, p, q] * w[k, c, r, s]
    return dx, dw, db


# --------------------------------------------------------------------------- Pooling

def _window(i, size, k, s, pad):
    """PyTorch's window bounds for output index i: (start, end) in input coordinates,
    clipped to the padded input (so they may reach into the padding)."""
    start = i * s - pad
    return start, min(start + k, size + pad)


def naive_max_pool(x, dy, kernel_size, stride, padding):
    """(pool.max) and its gradient with explicit loops, float64: y (N,C,P,Q), dx (N,C,H,W).

    Padding is -inf, the window is scanned in row-major order and only a strictly larger
    value, or NaN, replaces the running maximum (PyTorch's rule): the first maximum wins
    ties, and a window holding NaN gives NaN, its gradient going to the last NaN.
    """
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    P, Q = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1      # (conv.out)
    y = np.zeros((N, C, P, Q))
    dx = np.zeros(x.shape)
    for n, c, p, q in itertools.product(range(N), range(C), range(P), range(Q)):
        best, where = -np.inf, None
        h0, h1 = _window(p, H, kh, sh, ph)
        w0, w1 = _window(q, W, kw, sw, pw)
        for ih in range(h0, h1):
            for iw in range(w0, w1):
                inside = 0 <= ih < H and 0 <= iw < W
                v = x[n, c, ih, iw] if inside else -np.inf
                if v > best or (inside and v != v) or (where is None and inside):
                    best, where = v, (ih, iw)
        y[n, c, p, q] = best
        if dy is not None:
            dx[n, c, where[0], where[1]] += dy[n, c, p, q]
    return y, dx


def naive_avg_pool(x, dy, kernel_size, stride, padding, count_include_pad):
    """(pool.avg) and its gradient with explicit loops, float64, PyTorch's divisor:
    the window clipped to the padded input (count_include_pad) or to the real input."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    P, Q = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    y = np.zeros((N, C, P, Q))
    dx = np.zeros(x.shape)
    for n, c, p, q in itertools.product(range(N), range(C), range(P), range(Q)):
        h0, h1 = _window(p, H, kh, sh, ph)
        w0, w1 = _window(q, W, kw, sw, pw)
        cells = [(ih, iw) for ih in range(max(h0, 0), min(h1, H))
                 for iw in range(max(w0, 0), min(w1, W))]
        divisor = (h1 - h0) * (w1 - w0) if count_include_pad else len(cells)
        y[n, c, p, q] = sum(x[n, c, ih, iw] for ih, iw in cells) / divisor
        if dy is not None:
            for ih, iw in cells:
                dx[n, c, ih, iw] += dy[n, c, p, q] / divisor
    return y, dx


# --------------------------------------------------------------------------- Batch normalisation

def naive_batch_norm(x, dy, gamma, beta, eps):
    """(bn.fwd) and (bn.bwd) with explicit loops over each channel's M = N*H*W values, float64.

    Returns y, mean, var (biased), dx, dgamma, dbeta.
    """
    N, C, H, W = x.shape
    M = N * H * W
    y, dx = np.zeros(x.shape), np.zeros(x.shape)
    mean, var, dgamma, dbeta = np.zeros(C), np.zeros(C), np.zeros(C), np.zeros(C)
    for c in range(C):
        cells = list(itertools.product(range(N), range(H), range(W)))
        vals = [float(x[n, c, h, w]) for n, h, w in cells]
        mean[c] = math.fsum(vals) / M
        var[c] = math.fsum((v - mean[c]) ** 2 for v in vals) / M
        invstd = 1.0 / math.sqrt(var[c] + eps)
        x_hat = [(v - mean[c]) * invstd for v in vals]
        g = [float(dy[n, c, h, w]) for n, h, w in cells]
        dbeta[c] = math.fsum(g)
        dgamma[c] = math.fsum(gi * xi for gi, xi in zip(g, x_hat))
        for (n, h, w), xi, gi in zip(cells, x_hat, g):
            y[n, c, h, w] = gamma[c] * xi + beta[c]
            dx[n, c, h, w] = gamma[c] * invstd / M * (M * gi - dbeta[c] - xi * dgamma[c])
    return y, mean, var, dx, dgamma, dbeta
