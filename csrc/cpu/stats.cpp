// Streaming statistics: finite min/max with non-finite counts, fixed-size histograms, exact growth.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../kernels.h"
#include "parallel.h"

namespace qa {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

struct MinMaxF {
  float lo = kInf, hi = -kInf;
  int64_t nan = 0, pinf = 0, ninf = 0;
};

// Vectorizable: non-finite values are replaced by neutral elements instead of branching.
MinMaxF minmax_run(const float* x, int64_t n) {
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

void merge(MinMaxF* a, const MinMaxF& b) {
  a->lo = std::min(a->lo, b.lo);
  a->hi = std::max(a->hi, b.hi);
  a->nan += b.nan;
  a->pinf += b.pinf;
  a->ninf += b.ninf;
}

inline int64_t bin_of(float v, double lo, double inv_width, int64_t nbins) {
  double f = (static_cast<double>(v) - lo) * inv_width;
  f = std::min(std::max(f, 0.0), static_cast<double>(nbins - 1));
  return static_cast<int64_t>(f);
}

// Four interleaved count arrays hide the store-to-load latency of repeated hits on one bin.
void histogram_run(const float* x, int64_t n, double lo, double inv_width, int64_t* counts,
                   int64_t nbins) {
  std::vector<int64_t> sub(4 * nbins, 0);
  int64_t* h0 = sub.data();
  int64_t* h1 = h0 + nbins;
  int64_t* h2 = h1 + nbins;
  int64_t* h3 = h2 + nbins;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float a = x[i], b = x[i + 1], c = x[i + 2], d = x[i + 3];
    h0[bin_of(a, lo, inv_width, nbins)] += is_finite(a);
    h1[bin_of(b, lo, inv_width, nbins)] += is_finite(b);
    h2[bin_of(c, lo, inv_width, nbins)] += is_finite(c);
    h3[bin_of(d, lo, inv_width, nbins)] += is_finite(d);
  }
  for (; i < n; ++i) h0[bin_of(x[i], lo, inv_width, nbins)] += is_finite(x[i]);
  for (int64_t b = 0; b < nbins; ++b) counts[b] += h0[b] + h1[b] + h2[b] + h3[b];
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
  if (need_lo >= old_lo && need_hi <= old_hi) return 1.0;
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

}  // namespace qa
