/* fc_depthwise.h: the register tile of the depthwise convolution's forward (conv_depthwise.pyx).
 *
 * fc_dw_row_*: one output row of one channel, eq. (conv.dw),
 *
 *     y[q] = b + sum_{r,s} w[r, s] * xp[r*dh, q*sw + s*dw]      (xp at the row's first input row)
 *
 * in tiles of 2 vectors of L columns (8 floats or 4 doubles), each tile's accumulators held
 * in registers over all R*S taps and stored once. The row-update form of the teaching path
 * (conv_depthwise.pyx, _forward_plane) loads and stores the whole row once per tap instead,
 * and pays a loop start per tap and row: on the 7x7 and 4x4 maps of a small network that
 * overhead is most of the time. A last partial tile is a full vector shifted back to end at
 * Q (it recomputes a few columns with the same arithmetic, so the same bits); rows shorter
 * than one vector are scalar. Each output sums b, then the taps in (r, s) order, exactly as
 * the teaching path does, so both give the same bits.
 *
 * Written once for a type T and instantiated for float and double (C has no templates,
 * hence the macro); GCC/Clang vector extensions (16-byte vectors, the x86-64 baseline) say
 * which loop is the vector one.
 */
#ifndef FC_DEPTHWISE_H
#define FC_DEPTHWISE_H

#include <string.h>

#define FC_DW_ROW(T, NAME)                                                             \
static inline void NAME(const T *restrict x, const T *restrict w, T b, T *restrict y,  \
                        Py_ssize_t Wp, Py_ssize_t R, Py_ssize_t S, Py_ssize_t sw,      \
                        Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t Q)                    \
{                                                                                     \
    typedef T vec __attribute__((vector_size(16)));                                   \
    enum { L = 16 / sizeof(T) };                                                      \
    vec zero = {0}, x0 = zero, x1 = zero;                                             \
    Py_ssize_t q = 0;                                                                 \
    if (Q < L) {                                   /* shorter than a vector */        \
        for (; q < Q; q++) {                                                          \
            T a = b;                                                                  \
            for (Py_ssize_t r = 0; r < R; r++)                                        \
                for (Py_ssize_t s = 0; s < S; s++)                                    \
                    a += w[r * S + s] * x[r * dh * Wp + q * sw + s * dw];             \
            y[q] = a;                                                                 \
        }                                                                             \
        return;                                                                       \
    }                                                                                 \
    for (; q + 2 * L <= Q; q += 2 * L) {           /* two vectors */                  \
        vec a0 = zero + b, a1 = a0;                                                   \
        for (Py_ssize_t r = 0; r < R; r++) {                                          \
            const T *x_row = x + r * dh * Wp + q * sw;                                \
            for (Py_ssize_t s = 0; s < S; s++) {                                      \
                const T *xs = x_row + s * dw;                                         \
                if (sw == 1) {                                                        \
                    memcpy(&x0, xs, 16);                                              \
                    memcpy(&x1, xs + L, 16);                                          \
                } else {                                                              \
                    for (int i = 0; i < L; i++) {                                     \
                        x0[i] = xs[i * sw];                                           \
                        x1[i] = xs[(i + L) * sw];                                     \
                    }                                                                 \
                }                                                                     \
                T wv = w[r * S + s];                                                  \
                a0 += wv * x0;                                                        \
                a1 += wv * x1;                                                        \
            }                                                                         \
        }                                                                             \
        memcpy(y + q, &a0, 16);                                                       \
        memcpy(y + q + L, &a1, 16);                                                   \
    }                                                                                 \
    while (q < Q) {                                /* one vector, the last shifted */ \
        if (q + L > Q)                                                                \
            q = Q - L;                                                                \
        vec a0 = zero + b;                                                            \
        for (Py_ssize_t r = 0; r < R; r++) {                                          \
            const T *x_row = x + r * dh * Wp + q * sw;                                \
            for (Py_ssize_t s = 0; s < S; s++) {                                      \
                const T *xs = x_row + s * dw;                                         \
                if (sw == 1)                                                          \
                    memcpy(&x0, xs, 16);                                              \
                else                                                                  \
                    for (int i = 0; i < L; i++)                                       \
                        x0[i] = xs[i * sw];                                           \
                a0 += w[r * S + s] * x0;                                              \
            }                                                                         \
        }                                                                             \
        memcpy(y + q, &a0, 16);                                                       \
        q += L;                                                                       \
    }                                                                                 \
}
FC_DW_ROW(float, fc_dw_row_f32)
FC_DW_ROW(double, fc_dw_row_f64)

#endif
