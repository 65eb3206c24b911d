# Included (textually) by conv_direct.pyx and conv_im2col.pyx: one source for the O(1)
# guard both convolution kernels run before touching memory.


def _check_conv_args(x_shape, w_shape, stride, padding):
    """O(1) shape checks so that a direct call with inconsistent arguments raises instead of
    reading out of bounds (fastconv.functional does the user-facing validation).
    Returns (sh, sw, ph, pw)."""
    sh, sw = (int(v) for v in stride)
    ph, pw = (int(v) for v in padding)
    H, W = x_shape[2], x_shape[3]
    R, S = w_shape[2], w_shape[3]
    if w_shape[1] != x_shape[1]:
        raise ValueError(f"conv: w has {w_shape[1]} input channels but x has {x_shape[1]}")
    if sh < 1 or sw < 1 or ph < 0 or pw < 0:
        raise ValueError(f"conv: need stride >= 1 and padding >= 0, got {stride}, {padding}")
    if R > H + 2 * ph or S > W + 2 * pw:
        raise ValueError(f"conv: kernel {R}x{S} larger than the padded input "
                         f"{H + 2 * ph}x{W + 2 * pw}")
    if min(x_shape) == 0 or min(w_shape) == 0:
        raise ValueError("conv: empty arrays are not supported")
    return sh, sw, ph, pw
