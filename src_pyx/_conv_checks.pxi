# Included (textually) by conv_direct.pyx and conv_im2col.pyx: one source for the O(1)
# guard and the geometry both convolution kernels work out before touching memory.


def _conv_geometry(x_shape, w_shape, stride, padding, int n_threads, dy_shape=None):
    """Check the shapes and return (sh, sw, ph, pw, P, Q, n_threads to use).

    O(1) checks, so that a direct call with inconsistent arguments raises instead of reading
    out of bounds (fastconv.functional does the user-facing validation). P, Q by (conv.out);
    small convolutions run on one thread (threads_for_macs).
    """
    sh, sw = (int(v) for v in stride)
    ph, pw = (int(v) for v in padding)
    N, C, H, W = x_shape
    K, R, S = w_shape[0], w_shape[2], w_shape[3]
    if w_shape[1] != C:
        raise ValueError(f"conv: w has {w_shape[1]} input channels but x has {C}")
    if sh < 1 or sw < 1 or ph < 0 or pw < 0:
        raise ValueError(f"conv: need stride >= 1 and padding >= 0, got {stride}, {padding}")
    if R > H + 2 * ph or S > W + 2 * pw:
        raise ValueError(f"conv: kernel {R}x{S} larger than the padded input "
                         f"{H + 2 * ph}x{W + 2 * pw}")
    if min(x_shape) == 0 or min(w_shape) == 0:
        raise ValueError("conv: empty arrays are not supported")
    P = out_size(H, R, sh, ph)
    Q = out_size(W, S, sw, pw)
    if dy_shape is not None and tuple(dy_shape) != (N, K, P, Q):
        raise ValueError(f"conv2d_backward: dy must have shape {(N, K, P, Q)}, got {tuple(dy_shape)}")
    return sh, sw, ph, pw, P, Q, threads_for_macs(N * K * P * Q * C * R * S, n_threads)
