// Fake quantization per tensor and per channel; rounding and precision are template parameters.
#include <vector>

#include "../kernels.h"
#include "parallel.h"

namespace qa {
namespace {

template <Rounding R, typename T>
void run(const float* x, float* y, int64_t n, T inv, T scale, T qlo, T qhi) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = fake_quant_one<R, T>(x[i], inv, scale, qlo, qhi);
}

// Channel-last rows: the parameters change with every element.
template <Rounding R, typename T>
void run_row(const float* x, float* y, int64_t channels, const T* inv, const T* scale,
             const T* qlo, const T* qhi) {
#pragma omp simd
  for (int64_t c = 0; c < channels; ++c)
    y[c] = fake_quant_one<R, T>(x[c], inv[c], scale[c], qlo[c], qhi[c]);
}

template <Rounding R, typename T>
void per_tensor(const float* x, float* y, int64_t n, double scale, double offset, double steps) {
  const T s = static_cast<T>(scale);
  const T inv = T(1) / s;
  const T qlo = static_cast<T>(offset), qhi = static_cast<T>(offset + steps);
  const int threads = max_threads_for(n);
  if (threads == 1) return run<R, T>(x, y, n, inv, s, qlo, qhi);
#pragma omp parallel num_threads(threads)
  {
    int64_t b, e;
    slice(n, num_threads(), thread_id(), &b, &e);
    run<R, T>(x + b, y + b, e - b, inv, s, qlo, qhi);
  }
}

template <Rounding R, typename T>
void per_channel(const float* x, float* y, int64_t outer, int64_t channels, int64_t inner,
                 const double* scale, const double* offset, double steps) {
  std::vector<T> s(channels), inv(channels), qlo(channels), qhi(channels);
  for (int64_t c = 0; c < channels; ++c) {
    s[c] = static_cast<T>(scale[c]);
    inv[c] = T(1) / s[c];
    qlo[c] = static_cast<T>(offset[c]);
    qhi[c] = static_cast<T>(offset[c] + steps);
  }
  const int threads = max_threads_for(outer * channels * inner);
  if (inner == 1) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t o = 0; o < outer; ++o)
      run_row<R, T>(x + o * channels, y + o * channels, channels, inv.data(), s.data(),
                    qlo.data(), qhi.data());
    return;
  }
  const int64_t runs = outer * channels;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < runs; ++r) {
    const int64_t c = r % channels;
    run<R, T>(x + r * inner, y + r * inner, inner, inv[c], s[c], qlo[c], qhi[c]);
  }
}

}  // namespace

void fake_quant_per_tensor(const float* x, float* y, int64_t n, double scale, double offset,
                           double num_steps, Rounding rounding, bool use_double) {
  QA_DISPATCH(rounding, use_double, per_tensor, x, y, n, scale, offset, num_steps);
}

void fake_quant_per_channel(const float* x, float* y, int64_t outer, int64_t channels,
                            int64_t inner, const double* scale, const double* offset,
                            double num_steps, Rounding rounding, bool use_double) {
  QA_DISPATCH(rounding, use_double, per_channel, x, y, outer, channels, inner, scale, offset,
              num_steps);
}

}  // namespace qa
