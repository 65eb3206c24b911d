# cython: language_level=3
"""ReLU's inner loops for any kernel module (header-only, include/fc_relu.h): the
activation layer's, and the ReLU that pooling and the fully connected layer apply as they
write their output or gradient. ``isa`` is the module's fc_isa_level()."""
from cython cimport floating


cdef extern from "fc_relu.h":
    void fc_relu_forward_float(int isa, const float* x, float* y, Py_ssize_t n) noexcept nogil
    void fc_relu_forward_double(int isa, const double* x, double* y, Py_ssize_t n) noexcept nogil
    void fc_relu_backward_float(int isa, const float* dy, const float* y, float* dx,
                                Py_ssize_t n) noexcept nogil
    void fc_relu_backward_double(int isa, const double* dy, const double* y, double* dx,
                                 Py_ssize_t n) noexcept nogil
    void fc_add_forward_float(int isa, const float* a, const float* b, float* y,
                              Py_ssize_t n, int relu) noexcept nogil
    void fc_add_forward_double(int isa, const double* a, const double* b, double* y,
                               Py_ssize_t n, int relu) noexcept nogil


cdef inline void relu_block(int isa, const floating* x, floating* y,
                            Py_ssize_t n) noexcept nogil:
    """y[i] = max(x[i], 0) for i < n (relu.fwd: NaN stays, -0 gives +0); y may be x."""
    if floating is float:
        fc_relu_forward_float(isa, x, y, n)
    else:
        fc_relu_forward_double(isa, x, y, n)


cdef inline void relu_backward_block(int isa, const floating* dy, const floating* y,
                                     floating* dx, Py_ssize_t n) noexcept nogil:
    """dx[i] = dy[i] if y[i] > 0 else 0, for i < n (relu.bwd); dx may be dy."""
    if floating is float:
        fc_relu_backward_float(isa, dy, y, dx, n)
    else:
        fc_relu_backward_double(isa, dy, y, dx, n)


cdef inline void add_block(int isa, const floating* a, const floating* b, floating* y,
                           Py_ssize_t n, bint relu) noexcept nogil:
    """y[i] = a[i] + b[i], then max(., 0) with relu (add.fwd), for i < n; y may be a."""
    if floating is float:
        fc_add_forward_float(isa, a, b, y, n, relu)
    else:
        fc_add_forward_double(isa, a, b, y, n, relu)
