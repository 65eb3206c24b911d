/* What the C tests share: random inputs and a comparison with a float64 naive result. */
#ifndef FC_TEST_UTIL_H
#define FC_TEST_UTIL_H

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

static int failures = 0;

static float *randoms(ptrdiff_t n, unsigned *seed)
{
    float *a = malloc(sizeof(float) * (n > 0 ? n : 1));
    for (ptrdiff_t i = 0; i < n; i++) {
        *seed = *seed * 1103515245u + 12345u;
        a[i] = (float)((*seed >> 8) % 2001) / 1000.0f - 1.0f;
    }
    return a;
}

static void check(const char *what, const float *got, const double *want, ptrdiff_t n,
                  double length)
{
    double tol = 1e-6 * sqrt(length) * 8;
    for (ptrdiff_t i = 0; i < n; i++) {
        if (fabs(got[i] - want[i]) > tol * (1 + fabs(want[i]))) {
            printf("%s: element %ld is %.8g, want %.8g\n", what, (long)i, got[i], want[i]);
            failures++;
            return;
        }
    }
}

/* The layouts of the channels-last path, by the definition: x (C, H, W) -> xp
 * (H + 2ph, W + 2pw, C) with a zero border, and back (the border dropped). */
static double *padded_hwc(const float *x, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W,
                          ptrdiff_t ph, ptrdiff_t pw)
{
    ptrdiff_t Wp = W + 2 * pw;
    double *xp = calloc((H + 2 * ph) * Wp * C, sizeof(double));
    for (ptrdiff_t c = 0; c < C; c++)
        for (ptrdiff_t ih = 0; ih < H; ih++)
            for (ptrdiff_t iw = 0; iw < W; iw++)
                xp[((ih + ph) * Wp + iw + pw) * C + c] = x[(c * H + ih) * W + iw];
    return xp;
}

static double *unpadded_hwc(const float *xp, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W,
                            ptrdiff_t ph, ptrdiff_t pw)
{
    ptrdiff_t Wp = W + 2 * pw;
    double *x = calloc(C * H * W, sizeof(double));
    for (ptrdiff_t c = 0; c < C; c++)
        for (ptrdiff_t ih = 0; ih < H; ih++)
            for (ptrdiff_t iw = 0; iw < W; iw++)
                x[(c * H + ih) * W + iw] = xp[((ih + ph) * Wp + iw + pw) * C + c];
    return x;
}

#endif
