/* The Lanczos-3 sums of one output pixel for twinkles_hpc._warp (ext/_warp.pyx):
 *
 *     acc  = sum_b wy[b]   * ((wx[0] p[b][0] + wx[1] p[b][1]) + (wx[2] p[b][2] + wx[3] p[b][3])
 *                             + (wx[4] p[b][4] + wx[5] p[b][5]))
 *     accv = the same with wy^2, wx^2 and the variance rows pv[b],
 *
 * the rows b = 0..5 added left to right. With AVX the image's and the variance's products of a row share
 * one 4-lane multiply each and their pairs are added by one horizontal add, in the same order as the
 * scalar code: the two paths give the same bits (no fused multiply-add: setup.py builds with
 * -ffp-contract=off).
 */
#ifndef TWINKLES_WARP_SUMS_H
#define TWINKLES_WARP_SUMS_H

#include <stddef.h>
#ifdef __AVX__
#include <immintrin.h>
#endif

static inline double warp_dot6(const double *w, const double *p)
{
    return (w[0] * p[0] + w[1] * p[1]) + (w[2] * p[2] + w[3] * p[3]) + (w[4] * p[4] + w[5] * p[5]);
}

/* p, pv: the footprint's first pixel in the image and the variance; stride: doubles from one row to the
 * next. */
static inline void warp_sums6(const double *wx, const double *wy, const double *p, const double *pv,
                              ptrdiff_t stride, double *acc_out, double *accv_out)
{
#ifdef __AVX__
    const __m256d w4 = _mm256_loadu_pd(wx);
    const __m256d w4sq = _mm256_mul_pd(w4, w4);
    const __m128d w2 = _mm_loadu_pd(wx + 4);
    const __m128d w2sq = _mm_mul_pd(w2, w2);
    __m128d acc = _mm_setzero_pd();
    for (int b = 0; b < 6; b++) {
        const double *r = p + b * stride, *rv = pv + b * stride;
        __m256d h = _mm256_hadd_pd(_mm256_mul_pd(w4, _mm256_loadu_pd(r)), _mm256_mul_pd(w4sq, _mm256_loadu_pd(rv)));
        __m128d s = _mm_add_pd(_mm256_castpd256_pd128(h), _mm256_extractf128_pd(h, 1));
        __m128d t = _mm_hadd_pd(_mm_mul_pd(w2, _mm_loadu_pd(r + 4)), _mm_mul_pd(w2sq, _mm_loadu_pd(rv + 4)));
        __m128d y = _mm_set_pd(wy[b] * wy[b], wy[b]);
        acc = _mm_add_pd(acc, _mm_mul_pd(y, _mm_add_pd(s, t)));
    }
    *acc_out = _mm_cvtsd_f64(acc);
    *accv_out = _mm_cvtsd_f64(_mm_unpackhi_pd(acc, acc));
#else
    double wx2[6], acc = 0.0, accv = 0.0;
    for (int b = 0; b < 6; b++)
        wx2[b] = wx[b] * wx[b];
    for (int b = 0; b < 6; b++) {
        acc = acc + wy[b] * warp_dot6(wx, p + b * stride);
        accv = accv + (wy[b] * wy[b]) * warp_dot6(wx2, pv + b * stride);
    }
    *acc_out = acc;
    *accv_out = accv;
#endif
}

#endif
