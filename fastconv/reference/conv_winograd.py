"""Winograd's minimal filtering for 3x3, stride-1 convolution (Lavin & Gray, 2016), in NumPy.

Reference twin of ``fastconv._ext.conv_winograd`` (same functions, same signatures).

The idea, in one dimension. F(m, 3) computes m outputs of a 3-tap correlation,
``y_i = d_i g_0 + d_{i+1} g_1 + d_{i+2} g_2`` (i < m), from a window of m + 2 inputs. Done
directly that is 3m multiplications. Winograd's algorithm treats the window and the filter
as the coefficients of polynomials: their product is found from its values at m + 2 points
(each value one multiplication, of the filter's value by the window's), and the m outputs
are read back from the product by interpolation. In matrix form

(wino.1d)   y = A^T [ (G g) * (B^T d) ]        (* : elementwise; m + 2 multiplications)

where B^T (m+2 x m+2) evaluates the window, G (m+2 x 3) the filter, and A^T (m x m+2)
interpolates. Nesting the 1-D algorithm in itself gives the 2-D one for an m x m tile of
outputs from an (m+2) x (m+2) tile d of the input:

(wino.2d)   Y = A^T [ (G g G^T) * (B^T d B) ] A

**F(2x2, 3x3)** (points 0, 1, -1 and infinity; tile 4x4 in, 2x2 out)::

    B^T = [ 1  0 -1  0 ]     G = [  1    0    0  ]     A^T = [ 1  1  1  0 ]
          [ 0  1  1  0 ]         [ 1/2  1/2  1/2 ]           [ 0  1 -1 -1 ]
          [ 0 -1  1  0 ]         [ 1/2 -1/2  1/2 ]
          [ 0  1  0 -1 ]         [  0    0    1  ]

A 2x2 output tile costs 4 x 4 = 16 multiplications instead of the direct 2*2*3*3 = 36
(2.25x fewer); the additions of the transforms are cheap beside them, and in a network
they are shared: the input transform of a tile is reused by all K filters, the filter
transform by all tiles.

**F(4x4, 3x3)** (points 0, 1, -1, 2, -2 and infinity; tile 6x6 in, 4x4 out)::

    B^T = [ 4  0 -5  0  1  0 ]     G = [  1/4     0     0  ]   A^T = [ 1  1  1  1  1  0 ]
          [ 0 -4 -4  1  1  0 ]         [ -1/6  -1/6  -1/6  ]         [ 0  1 -1  2 -2  0 ]
          [ 0  4 -4 -1  1  0 ]         [ -1/6   1/6  -1/6  ]         [ 0  1  1  4  4  0 ]
          [ 0 -2 -1  2  1  0 ]         [ 1/24  1/12   1/6  ]         [ 0  1 -1  8 -8  1 ]
          [ 0  2 -1 -2  1  0 ]         [ 1/24 -1/12   1/6  ]
          [ 0  4  0 -5  0  1 ]         [   0     0     1   ]

36 multiplications per 4x4 output tile instead of 4*4*9 = 144 (4x fewer). The price is
accuracy: the points 2 and -2 bring the powers 4 and 8 into A^T and the fractions
1/6, 1/24 into G, so rounding errors grow (see "Accuracy").

**The convolution layer as GEMMs.** With C input channels, K filters and T tiles (over
the batch), the elementwise product in (wino.2d) summed over the channels becomes, for each
of the (m+2)^2 positions (i, j) of the transformed tile, an ordinary matrix product:

(wino.gemm) U[i,j] (K, C) = (G g_{k,c} G^T)[i, j]      filter transform, once per call
            V[i,j] (C, T) = (B^T d_{c,t} B)[i, j]      input transform, once per tile and channel
            M[i,j] (K, T) = U[i,j] @ V[i,j]            16 (F2) or 36 (F4) independent GEMMs
            Y_{k,t} = A^T M_{k,t} A                    inverse transform: the output tile

Output tiles hang over the bottom and right edges when m does not divide the output size:
the input is read as zeros there and the outputs outside are dropped.

**Backward.** dx of a 3x3 stride-1 convolution with padding p is itself a 3x3 stride-1
convolution: of dy with the flipped, transposed kernel ``w[:, :, ::-1, ::-1]`` viewed as
(C, K, 3, 3), padding 2 - p (a negative padding crops), output size H x W:
``dx[n,c,h,v] = sum_{k,r,s} dy[n, k, h + r - (2-ph), v + s - (2-pw)] * w[k, c, 2-r, 2-s]``.

dw is (wino.2d) run backwards. Y = A^T [U * V] A is linear in U = G g G^T, so the chain
rule through it gives the gradient of U, ``(A dY A^T) * V``, and through U = G g G^T that
of g, ``G^T [...] G``; summed over the tiles t and written as GEMMs like the forward pass:

(wino.dw)   Z[i,j] (K, T)  = (A dY_{k,t} A^T)[i, j]   dy transform, once per tile
            Mw[i,j] (K, C) = Z[i,j] @ V[i,j]^T         16 (F2) or 36 (F4) GEMMs over the tiles
            dw_{k,c} = G^T Mw_{k,c} G                  the 3x3 gradient of each filter

It costs the same (m+2)^2 multiplications per m x m tile of dy as the forward pass costs
per tile of y (4x fewer than dw's direct formula with F(4x4, 3x3)).

**Dilation.** A kernel dilated by d (taps d apart) reads, for the outputs (a + d*i,
b + d*j) of one "phase" (a, b), only the inputs (a + d*i', b + d*j'):

(wino.dilated)  on that sub-image the dilated kernel is an ordinary 3x3 one,

so a dilated convolution is d x d ordinary ones, interleaved, and Winograd computes each.

**Accuracy.** The float32 error, as the largest |error| over the largest |output|, against
float64 truth, measured forward and dx on the layer suite's 3x3 stride-1 layers (16 to 128
channels, standard normal or positive uniform data):

    F(2x2, 3x3)   at most 7.2e-7   (im2col: 8.9e-7)    bound 2e-6
    F(4x4, 3x3)   at most 1.0e-5                        bound 3e-5

(dw, summed over every tile of the batch, measured on the full layers: at most 7.7e-7 and
6.7e-6, im2col's 4.6e-7.)

F(4x4) loses about one more decimal digit than F(2x2), most with zero-mean data, where
the large coefficients of A^T and B^T amplify the rounding of terms that cancel. The bounds
are tested (tests/test_conv_winograd.py). In float64 both stay below 1e-12 relative.

**NaN and Inf.** The transforms mix every value of a tile with the others, so a NaN or Inf
in x spreads to every output of the tiles whose input windows contain it (up to a
(2m) x (2m) block), where the formula gives non-finite values only in the 3x3
neighbourhood; Inf meeting -Inf inside a transform gives NaN. A NaN or Inf in w makes the
whole output channel non-finite, as the formula does (the padding's zeros multiply it),
though Inf may come out as NaN. Large finite values may overflow in a transform where the
formula would not. ``algo="auto"`` therefore checks and runs im2col where any of this could
happen; an explicit ``algo="winograd"`` computes as described here.
"""
import numpy as np

from .activation import relu_backward
from .conv_direct import conv_epilogue

__all__ = ["conv2d_forward", "conv2d_backward", "transform_matrices", "TILES"]

TILES = (2, 4)          # output tile sizes m of F(m x m, 3x3)
DEFAULT_TILE = 4


def transform_matrices(m):
    """(B^T, G, A^T) of F(m x m, 3x3), as float64 arrays, for m = 2 or 4."""
    if m == 2:
        BT = [[1, 0, -1, 0],
              [0, 1, 1, 0],
              [0, -1, 1, 0],
              [0, 1, 0, -1]]
        G = [[1, 0, 0],
             [1 / 2, 1 / 2, 1 / 2],
             [1 / 2, -1 / 2, 1 / 2],
             [0, 0, 1]]
        AT = [[1, 1, 1, 0],
              [0, 1, -1, -1]]
    elif m == 4:
        BT = [[4, 0, -5, 0, 1, 0],
              [0, -4, -4, 1, 1, 0],
              [0, 4, -4, -1, 1, 0],
              [0, -2, -1, 2, 1, 0],
              [0, 2, -1, -2, 1, 0],
              [0, 4, 0, -5, 0, 1]]
        G = [[1 / 4, 0, 0],
             [-1 / 6, -1 / 6, -1 / 6],
             [-1 / 6, 1 / 6, -1 / 6],
             [1 / 24, 1 / 12, 1 / 6],
             [1 / 24, -1 / 12, 1 / 6],
             [0, 0, 1]]
        AT = [[1, 1, 1, 1, 1, 0],
              [0, 1, -1, 2, -2, 0],
              [0, 1, 1, 4, 4, 0],
              [0, 1, -1, 8, -8, 1]]
    else:
        raise ValueError(f"conv_winograd: tile must be one of {TILES}, got {m!r}")
    return np.array(BT, np.float64), np.array(G, np.float64), np.array(AT, np.float64)


def _check(w_shape, stride, tile):
    if tuple(w_shape[2:]) != (3, 3) or tuple(stride) != (1, 1):
        raise ValueError(f"conv_winograd: needs a 3x3 kernel with stride 1, got kernel "
                         f"{tuple(w_shape[2:])} and stride {tuple(stride)}")
    if tile not in TILES:
        raise ValueError(f"conv_winograd: tile must be one of {TILES}, got {tile!r}")


def _window(x, offset, rows, cols):
    """xc[n, c, i, j] = x[n, c, i + oh, j + ow] for i < rows, j < cols, zeros outside x."""
    N, C, H, W = x.shape
    oh, ow = offset
    xc = np.zeros((N, C, rows, cols), x.dtype)
    h0, h1 = max(0, -oh), min(rows, H - oh)               # rows of xc that lie inside x
    v0, v1 = max(0, -ow), min(cols, W - ow)
    if h1 > h0 and v1 > v0:
        xc[:, :, h0:h1, v0:v1] = x[:, :, h0 + oh:h1 + oh, v0 + ow:v1 + ow]
    return xc


def _transformed_tiles(x, BT, m, offset, th, tw):
    """V (alpha, alpha, C, N*th*tw): B^T d B of each of the th x tw input tiles of each
    image, d[a, b] = x[n, c, oh + ti*m + a, ow + tj*m + b] (zeros outside x), tiles in the
    order (n, ti, tj)."""
    alpha = m + 2
    N, C = x.shape[:2]
    xc = _window(x, offset, th * m + 2, tw * m + 2)       # the input that the tiles cover
    # d[n, c, ti, tj, a, b] = xc[n, c, ti*m + a, tj*m + b]: overlapping (m+2)^2 input tiles
    d = np.lib.stride_tricks.sliding_window_view(xc, (alpha, alpha), axis=(2, 3))[
        :, :, ::m, ::m][:, :, :th, :tw]
    V = np.einsum("ia,nctuab,jb->ijcntu", BT, d, BT)      # input transform, tile by tile
    return V.reshape(alpha, alpha, C, N * th * tw)


def winograd_correlate(x, w, m, offset, out_size, dilation=(1, 1)):
    """``y[n,k,p,q] = sum_{c,r,s} w[k,c,r,s] * x[n, c, p + dh*r + oh, q + dw*s + ow]`` (x = 0
    outside the image) for p < P, q < Q, by (wino.gemm).

    x (N, C, H, W), w (K, C, 3, 3), offset (oh, ow) (-padding for a forward pass),
    out_size (P, Q), dilation (dh, dw)  ->  y (N, K, P, Q), x's dtype; computed in x's
    dtype throughout.
    """
    dtype = x.dtype
    N, C, H, W = x.shape
    K = w.shape[0]
    P, Q = out_size
    dh, dw = dilation
    if (dh, dw) != (1, 1):
        # (wino.dilated) The outputs (a + dh*i, b + dw*j) of one phase (a, b) read only the
        # inputs (a + dh*i', b + dw*j'): on that sub-image the dilated kernel is an ordinary
        # one. So a dilated convolution is dh*dw ordinary ones, interleaved.
        xc = _window(x, offset, P + 2 * dh, Q + 2 * dw)   # the rows and columns y reads
        y = np.empty((N, K, P, Q), dtype)
        for a in range(min(dh, P)):
            for b in range(min(dw, Q)):
                Pa, Qb = -(-(P - a) // dh), -(-(Q - b) // dw)   # the phase's outputs (ceil)
                y[:, :, a::dh, b::dw] = winograd_correlate(xc[:, :, a::dh, b::dw], w, m,
                                                           (0, 0), (Pa, Qb))
        return y
    BT, G, AT = (a.astype(dtype) for a in transform_matrices(m))
    alpha = m + 2
    th, tw = -(-P // m), -(-Q // m)                       # tiles down and across (ceil)
    U = np.einsum("ir,kcrs,js->ijkc", G, w, G)            # filter transform (alpha, alpha, K, C)
    V = _transformed_tiles(x, BT, m, offset, th, tw)      # input transform (alpha, alpha, C, T)
    M = np.matmul(U, V)                                   # the alpha^2 GEMMs: (alpha, alpha, K, T)
    M = M.reshape(alpha, alpha, K, N, th, tw)
    Y = np.einsum("ai,ijkntu,bj->nktaub", AT, M, AT)      # inverse transform, tile by tile
    Y = Y.reshape(N, K, th * m, tw * m)[:, :, :P, :Q]     # tiles side by side, overhang cut
    return np.ascontiguousarray(Y, dtype=dtype)


def winograd_weight_gradient(x, dy, m, offset, dilation=(1, 1)):
    """``dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] * x[n, c, p + dh*r + oh, q + dw*s + ow]`` (x = 0
    outside the image), the weight gradient of :func:`winograd_correlate`, by (wino.dw).

    x (N, C, H, W), dy (N, K, P, Q), offset (oh, ow), dilation (dh, dw)  ->
    dw (K, C, 3, 3), x's dtype; computed in x's dtype throughout.
    """
    dtype = x.dtype
    N, K, P, Q = dy.shape
    dh, dw = dilation
    if (dh, dw) != (1, 1):                                # (wino.dilated): phase by phase
        xc = _window(x, offset, P + 2 * dh, Q + 2 * dw)
        return sum(winograd_weight_gradient(xc[:, :, a::dh, b::dw], dy[:, :, a::dh, b::dw], m,
                                            (0, 0))
                   for a in range(min(dh, P)) for b in range(min(dw, Q)))
    BT, G, AT = (a.astype(dtype) for a in transform_matrices(m))
    alpha = m + 2
    th, tw = -(-P // m), -(-Q // m)
    V = _transformed_tiles(x, BT, m, offset, th, tw)      # (alpha, alpha, C, T)
    dyc = np.zeros((N, K, th * m, tw * m), dtype)         # dy in whole tiles, zeros past it
    dyc[:, :, :P, :Q] = dy
    dyt = dyc.reshape(N, K, th, m, tw, m)                 # [n, k, ti, a, tj, b]
    Z = np.einsum("ai,nktaub,bj->ijkntu", AT, dyt, AT)    # A dY A^T, tile by tile
    Z = Z.reshape(alpha, alpha, K, N * th * tw)           # (alpha, alpha, K, T)
    Mw = np.matmul(Z, V.transpose(0, 1, 3, 2))            # the alpha^2 GEMMs: (alpha, alpha, K, C)
    return np.ascontiguousarray(np.einsum("ir,ijkc,js->kcrs", G, Mw, G), dtype=dtype)


def conv2d_forward(x, w, b, stride, padding, n_threads=None, dilation=(1, 1), *, relu=False,
                   residual=None, tile=DEFAULT_TILE, pool_out=None):
    """(conv.fwd) for a 3x3 kernel, stride 1, by F(tile x tile, 3x3).

    x (N, C, H, W), w (K, C, 3, 3), b (K,) or None, stride (1, 1), padding (ph, pw),
    n_threads ignored, dilation (dh, dw), tile 2 or 4  ->
    y (N, K, H + 2ph - 2dh, W + 2pw - 2dw), x's dtype; then ``relu(y + residual)`` where
    asked (conv.fused), and y's 2x2 max pooling into ``pool_out`` (conv.pool).
    """
    _check(w.shape, stride, tile)
    (ph, pw), (dh, dw) = padding, dilation
    P, Q = x.shape[2] + 2 * ph - 2 * dh, x.shape[3] + 2 * pw - 2 * dw
    y = winograd_correlate(x, w, tile, (-ph, -pw), (P, Q), (dh, dw))
    if b is not None:
        y += b[None, :, None, None]
    return conv_epilogue(y, relu, residual, pool_out)


def conv2d_backward(dy, x, w, stride, padding, n_threads=None, need_dx=True, need_dw=True,
                    dilation=(1, 1), *, tile=DEFAULT_TILE, need_db=True, through_relu=False):
    """Gradients of :func:`conv2d_forward` (conv.bwd): dx by Winograd, as the 3x3 stride-1
    convolution of dy with the flipped, transposed kernel (the same dilation d) and padding
    2d - p; dw and db by the direct formula. ``through_relu``: x is a ReLU's output, and dx
    the gradient of that ReLU's input (0 where x is not > 0, eq. relu.bwd).

    Returns dx (N, C, H, W) or None (need_dx False), dw (K, C, 3, 3) and db (K,) or None
    (need_dw False; db alone with need_db False).
    """
    _check(w.shape, stride, tile)
    if not (need_dx or need_dw):
        raise ValueError("conv2d_backward: need_dx and need_dw are both False (nothing to do)")
    (ph, pw), (dh, dw) = padding, dilation
    dW = db = None
    if need_dw:
        dW = winograd_weight_gradient(x, dy, tile, (-ph, -pw), (dh, dw))
        db = dy.sum(axis=(0, 2, 3)) if need_db else None
    if not need_dx:
        return None, dW, db
    w_flip = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))   # (C, K, 3, 3)
    dx = winograd_correlate(dy, w_flip, tile, (ph - 2 * dh, pw - 2 * dw), x.shape[2:],
                            (dh, dw))
    if through_relu:
        dx = relu_backward(dx, x)
    return dx, dW, db
