// The CPU kernel API: stateless free functions over contiguous buffers with explicit sizes.
//
// State (histogram counts, accumulators) lives in arrays the caller owns. A per-channel
// tensor is viewed as [outer, channels, inner], so any axis works without strides.
#pragma once

#include <cstdint>

#include "qa_math.h"

namespace qa {

// ---- fake quantization ---------------------------------------------------------------
// y = clamp(round(x / scale), offset, offset + num_steps) * scale, x / scale computed as
// x * (1 / scale) like torch. `use_double` selects double arithmetic (bitwidths above 22).
// y may alias x.
void fake_quant_per_tensor(const float* x, float* y, int64_t n, double scale, double offset,
                           double num_steps, Rounding rounding, bool use_double);
void fake_quant_per_channel(const float* x, float* y, int64_t outer, int64_t channels,
                            int64_t inner, const double* scale, const double* offset,
                            double num_steps, Rounding rounding, bool use_double);

// ---- statistics -----------------------------------------------------------------------
// Finite min/max and counts of NaN, +inf and -inf. With no finite value, lo = +inf, hi = -inf.
struct MinMax {
  double lo, hi;
  int64_t n_nan, n_posinf, n_neginf;
};
MinMax minmax(const float* x, int64_t n);
// One MinMax per channel, written into arrays of length `channels`.
void minmax_per_channel(const float* x, int64_t outer, int64_t channels, int64_t inner,
                        double* lo, double* hi, int64_t* n_nan, int64_t* n_posinf,
                        int64_t* n_neginf);

// Adds the finite values of x to counts[nbins] with bin i = [lo + i*width, lo + (i+1)*width).
// Values outside the range (possible only by rounding when the caller grew the range to
// cover the batch) land in the first or last bin; non-finite values are skipped.
void histogram_add(const float* x, int64_t n, double lo, double width, int64_t* counts,
                   int64_t nbins);
// The same for every channel c, with its own range and counts[c * nbins ...].
void histogram_add_per_channel(const float* x, int64_t outer, int64_t channels, int64_t inner,
                               const double* lo, const double* width, int64_t* counts,
                               int64_t nbins);

// Grows the range [lo, lo + nbins*width) in place so that it covers [need_lo, need_hi]:
// the new width is an integer multiple k of the old one and the new edges fall on old
// edges, so every old bin moves whole into one new bin (counts preserved exactly).
// Returns k (1 when nothing had to change).
double histogram_grow(int64_t* counts, int64_t nbins, double* lo, double* width,
                      double need_lo, double need_hi);

// The same for every channel c (counts[c * nbins ...], lo[c], width[c]); channels whose
// need_lo > need_hi (no data in this batch) are left alone.
void histogram_grow_per_channel(int64_t* counts, int64_t channels, int64_t nbins, double* lo,
                                double* width, const double* need_lo, const double* need_hi);

// ---- encodings ------------------------------------------------------------------------
struct SearchResult {
  double min, max, cost;
};
// TF-Enhanced: SQNR-driven grid search over the histogram (gamma weights saturation).
// obs_min <= 0 <= obs_max is the observed range (already widened to include 0).
// offset_mode: 0 asymmetric, 1 symmetric signed, 2 symmetric unsigned (offset 0).
SearchResult tf_enhanced_search(const int64_t* counts, int64_t nbins, double lo, double width,
                                double obs_min, double obs_max, double num_steps,
                                int offset_mode, double gamma);
// One search per channel (in parallel), results written to min[c], max[c], cost[c].
void tf_enhanced_search_per_channel(const int64_t* counts, int64_t channels, int64_t nbins,
                                    const double* lo, const double* width, const double* obs_min,
                                    const double* obs_max, double num_steps, int offset_mode,
                                    double gamma, double* min, double* max, double* cost);
// Value at quantile q in [0, 1] of the histogram, interpolating linearly inside a bin.
double histogram_quantile(const int64_t* counts, int64_t nbins, double lo, double width,
                          double q);

// ---- error accumulation ---------------------------------------------------------------
// acc: [sum (r-t)^2, sum r^2, sum t^2, sum r*t, max |r-t|, n finite pairs, n non-finite pairs]
constexpr int kErrorStatsSize = 7;
void error_stats(const float* ref, const float* test, int64_t n, double* acc);

}  // namespace qa
