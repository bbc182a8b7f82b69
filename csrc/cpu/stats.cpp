// Streaming statistics: finite min/max with non-finite counts, fixed-size histograms, exact growth.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "../kernels.h"
#include "parallel.h"

namespace qa {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kBlock = 2048;

struct MinMaxF {
  float lo = kInf, hi = -kInf;
  int64_t nan = 0, pinf = 0, ninf = 0;
};

void merge(MinMaxF* a, const MinMaxF& b) {
  a->lo = std::min(a->lo, b.lo);
  a->hi = std::max(a->hi, b.hi);
  a->nan += b.nan;
  a->pinf += b.pinf;
  a->ninf += b.ninf;
}

// Vectorizable: non-finite values are replaced by neutral elements instead of branching.
MinMaxF minmax_careful(const float* x, int64_t n) {
  float lo = kInf, hi = -kInf;
  int64_t nan = 0, pinf = 0, ninf = 0;
#pragma omp simd reduction(min : lo) reduction(max : hi) reduction(+ : nan, pinf, ninf)
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const bool finite = is_finite(v);
    lo = std::min(lo, finite ? v : kInf);
    hi = std::max(hi, finite ? v : -kInf);
    nan += (v != v);
    pinf += (v == kInf);
    ninf += (v == -kInf);
  }
  return {lo, hi, nan, pinf, ninf};
}

// Fast path for blocks without NaN/inf (the usual case): plain min/max plus a sticky
// "x - x" sum that turns NaN when any value is not finite; such blocks are redone carefully.
QA_HOT MinMaxF minmax_run(const float* x, int64_t n) {
  MinMaxF total;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t m = std::min(kBlock, n - b);
    const float* xb = x + b;
    float lo = kInf, hi = -kInf, flag = 0.0f;
    int64_t i = 0;
#if defined(__GNUC__)
    // Eight independent 4-float accumulators: one would make the loop wait on min/max/add
    // latency (3x slower). GCC/Clang vector extensions map to SSE/AVX on any x86-64 or NEON.
    typedef float v4 __attribute__((vector_size(16)));
    v4 vlo[8], vhi[8], vfl[8];
    for (int j = 0; j < 8; ++j) vlo[j] = v4{} + kInf, vhi[j] = v4{} - kInf, vfl[j] = v4{};
    for (; i + 32 <= m; i += 32)
      for (int j = 0; j < 8; ++j) {
        v4 v;
        std::memcpy(&v, xb + i + 4 * j, sizeof v);
        vlo[j] = v < vlo[j] ? v : vlo[j];
        vhi[j] = v > vhi[j] ? v : vhi[j];
        vfl[j] += v - v;
      }
    for (int j = 0; j < 8; ++j)
      for (int k = 0; k < 4; ++k) {
        lo = std::min(lo, vlo[j][k]);
        hi = std::max(hi, vhi[j][k]);
        flag += vfl[j][k];
      }
#endif
    for (; i < m; ++i) {
      lo = std::min(lo, xb[i]);
      hi = std::max(hi, xb[i]);
      flag += xb[i] - xb[i];
    }
    MinMaxF part = flag == 0.0f ? MinMaxF{lo, hi, 0, 0, 0} : minmax_careful(xb, m);
    merge(&total, part);
  }
  return total;
}


inline int64_t bin_of(float v, double lo, double inv_width, int64_t nbins) {
  double f = (static_cast<double>(v) - lo) * inv_width;
  // max(0, NaN) is 0 (std::max returns its first argument when unordered): always in range.
  f = std::min(std::max(0.0, f), static_cast<double>(nbins - 1));
  return static_cast<int64_t>(f);
}

// Bin indices are computed a block at a time (vectorized), then counted into four interleaved
// count arrays, which hides the store-to-load latency of repeated hits on one bin.
QA_HOT void histogram_run(const float* x, int64_t n, double lo, double inv_width, int64_t* counts,
                          int64_t nbins) {
  std::vector<int64_t> sub(4 * nbins, 0);
  int64_t* h[4] = {sub.data(), sub.data() + nbins, sub.data() + 2 * nbins, sub.data() + 3 * nbins};
  alignas(64) int32_t idx[kBlock];
  const double top = static_cast<double>(nbins - 1);
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t m = std::min(kBlock, n - b);
    const float* xb = x + b;
    float flag = 0.0f;
#pragma omp simd reduction(+ : flag)
    for (int64_t i = 0; i < m; ++i) {
      double f = (static_cast<double>(xb[i]) - lo) * inv_width;
      f = std::min(std::max(0.0, f), top);  // max(0, NaN) is 0: a valid index, counted 0 below
      idx[i] = static_cast<int32_t>(f);
      flag += xb[i] - xb[i];
    }
    if (flag == 0.0f) {
      int64_t i = 0;
      for (; i + 4 <= m; i += 4) {
        ++h[0][idx[i]];
        ++h[1][idx[i + 1]];
        ++h[2][idx[i + 2]];
        ++h[3][idx[i + 3]];
      }
      for (; i < m; ++i) ++h[0][idx[i]];
    } else {
      for (int64_t i = 0; i < m; ++i) h[0][idx[i]] += is_finite(xb[i]);
    }
  }
  for (int64_t k = 0; k < nbins; ++k) counts[k] += h[0][k] + h[1][k] + h[2][k] + h[3][k];
}

}  // namespace

MinMax minmax(const float* x, int64_t n) {
  MinMaxF total;
  const int threads = max_threads_for(n);
  if (threads == 1) {
    total = minmax_run(x, n);
  } else {
    std::vector<MinMaxF> parts(threads);
#pragma omp parallel num_threads(threads)
    {
      int64_t b, e;
      slice(n, num_threads(), thread_id(), &b, &e);
      parts[thread_id()] = minmax_run(x + b, e - b);
    }
    for (const auto& p : parts) merge(&total, p);
  }
  return {total.lo, total.hi, total.nan, total.pinf, total.ninf};
}

void minmax_per_channel(const float* x, int64_t outer, int64_t channels, int64_t inner,
                        double* lo, double* hi, int64_t* n_nan, int64_t* n_posinf,
                        int64_t* n_neginf) {
  const int threads = max_threads_for(outer * channels * inner);
  std::vector<MinMaxF> acc(static_cast<size_t>(threads) * channels);
#pragma omp parallel num_threads(threads)
  {
    MinMaxF* mine = acc.data() + static_cast<size_t>(thread_id()) * channels;
    if (inner == 1) {
#pragma omp for schedule(static)
      for (int64_t o = 0; o < outer; ++o) {
        const float* row = x + o * channels;
        for (int64_t c = 0; c < channels; ++c) {
          const float v = row[c];
          MinMaxF& m = mine[c];
          if (is_finite(v)) {
            m.lo = std::min(m.lo, v);
            m.hi = std::max(m.hi, v);
          } else {
            m.nan += (v != v);
            m.pinf += (v == kInf);
            m.ninf += (v == -kInf);
          }
        }
      }
    } else {
#pragma omp for schedule(static)
      for (int64_t r = 0; r < outer * channels; ++r) merge(&mine[r % channels], minmax_run(x + r * inner, inner));
    }
  }
  for (int64_t c = 0; c < channels; ++c) {
    MinMaxF m;
    for (int t = 0; t < threads; ++t) merge(&m, acc[static_cast<size_t>(t) * channels + c]);
    lo[c] = m.lo;
    hi[c] = m.hi;
    n_nan[c] = m.nan;
    n_posinf[c] = m.pinf;
    n_neginf[c] = m.ninf;
  }
}

void histogram_add(const float* x, int64_t n, double lo, double width, int64_t* counts,
                   int64_t nbins) {
  const double inv_width = 1.0 / width;
  const int threads = max_threads_for(n);
  if (threads == 1) return histogram_run(x, n, lo, inv_width, counts, nbins);
  std::vector<int64_t> parts(static_cast<size_t>(threads) * nbins, 0);
#pragma omp parallel num_threads(threads)
  {
    int64_t b, e;
    slice(n, num_threads(), thread_id(), &b, &e);
    histogram_run(x + b, e - b, lo, inv_width, parts.data() + static_cast<size_t>(thread_id()) * nbins, nbins);
  }
  for (int t = 0; t < threads; ++t)
    for (int64_t b = 0; b < nbins; ++b) counts[b] += parts[static_cast<size_t>(t) * nbins + b];
}

void histogram_add_per_channel(const float* x, int64_t outer, int64_t channels, int64_t inner,
                               const double* lo, const double* width, int64_t* counts,
                               int64_t nbins) {
  const int threads = max_threads_for(outer * channels * inner);
  // Each channel's counts belong to one thread, so no merging is needed.
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t c = 0; c < channels; ++c) {
    const double inv_width = 1.0 / width[c];
    int64_t* h = counts + c * nbins;
    for (int64_t o = 0; o < outer; ++o) {
      const float* run = x + (o * channels + c) * inner;
      for (int64_t i = 0; i < inner; ++i) h[bin_of(run[i], lo[c], inv_width, nbins)] += is_finite(run[i]);
    }
  }
}

double histogram_grow(int64_t* counts, int64_t nbins, double* lo, double* width,
                      double need_lo, double need_hi) {
  const double old_lo = *lo, old_w = *width;
  const double old_hi = old_lo + nbins * old_w;
  // A sub-bin overshoot (rounding of lo + nbins * width) is binned into the edge bin instead.
  const double slack = old_w * 1e-6;
  if (need_lo >= old_lo - slack && need_hi <= old_hi + slack) return 1.0;
  // Shift the low edge by a whole number of old bins, then widen by a whole factor k.
  const double shift = need_lo < old_lo ? std::ceil((old_lo - need_lo) / old_w) : 0.0;
  const double new_lo = old_lo - shift * old_w;
  const double span = std::max(need_hi, old_hi) - new_lo;
  double k = std::max(2.0, std::ceil(span / (nbins * old_w)));
  // Rounding in new_lo or span can leave need_hi a hair outside; widen until it is not.
  // (k + 1 == k above 2^53, hence the relative step.)
  while (new_lo + nbins * old_w * k < need_hi) k = std::max(k + 1.0, std::ceil(k * (1.0 + 1e-9)));
  const double new_w = old_w * k;
  std::vector<int64_t> grown(nbins, 0);
  for (int64_t j = 0; j < nbins; ++j) {
    if (counts[j] == 0) continue;
    // The midpoint of an old bin lies half an old bin from any new edge: no ambiguity.
    const double mid = old_lo + (j + 0.5) * old_w;
    int64_t b = static_cast<int64_t>(std::floor((mid - new_lo) / new_w));
    b = std::min<int64_t>(std::max<int64_t>(b, 0), nbins - 1);
    grown[b] += counts[j];
  }
  std::copy(grown.begin(), grown.end(), counts);
  *lo = new_lo;
  *width = new_w;
  return k;
}

void histogram_grow_per_channel(int64_t* counts, int64_t channels, int64_t nbins, double* lo,
                                double* width, const double* need_lo, const double* need_hi) {
  for (int64_t c = 0; c < channels; ++c)
    if (need_lo[c] <= need_hi[c])
      histogram_grow(counts + c * nbins, nbins, lo + c, width + c, need_lo[c], need_hi[c]);
}

}  // namespace qa
