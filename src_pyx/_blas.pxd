# cython: language_level=3
"""Row-major GEMM over SciPy's cython_blas, callable without the GIL (header-only)."""
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm


cdef inline void gemm_rm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
                         const floating* A, int lda, const floating* B, int ldb,
                         floating beta, floating* C, int ldc) noexcept nogil:
    """Row-major C[m, n] = alpha * op(A)[m, k] @ op(B)[k, n] + beta * C.

    BLAS is column-major: a row-major matrix is its transpose in column-major, so we
    compute C^T = op(B)^T op(A)^T, i.e. call gemm with the operands swapped.
    lda, ldb, ldc are the row-major leading dimensions (elements per row as stored).
    """
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*>B, &ldb, <float*>A, &lda, &beta, C, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*>B, &ldb, <double*>A, &lda, &beta, C, &ldc)
