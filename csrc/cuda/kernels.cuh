// The CUDA kernels and their host launchers: fake quantization, min/max, histograms, error stats.
//
// Same semantics as the CPU kernels in csrc/cpu (the scalar math is shared through qa_math.h).
// Launchers take device pointers and a stream, throw std::runtime_error on any CUDA failure and
// never touch Python. Reductions write one partial per block and finish on the host, in block
// order, so results do not depend on scheduling.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "../qa_math.h"

namespace qa {
namespace cuda {

// ---- error checking and small RAII helpers -----------------------------------------------

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(err));
}

#define QA_CUDA_CHECK(expr) ::qa::cuda::check((expr), #expr)

// A launch reports bad configurations only through cudaGetLastError.
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

// Makes `device` current for one call and restores the previous device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    QA_CUDA_CHECK(cudaGetDevice(&previous_));
    if (device != previous_) QA_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }  // cannot throw from a destructor
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

// Device scratch memory for one call; the caller synchronizes its stream before this dies.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (n > 0) QA_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr_), n * sizeof(T)));
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() const { return ptr_; }
  size_t bytes() const { return n_ * sizeof(T); }

 private:
  T* ptr_ = nullptr;
  size_t n_ = 0;
};

inline cudaStream_t as_stream(uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

// ---- launch geometry ------------------------------------------------------------------------

// Every kernel runs kBlock threads per block (the block reductions rely on it) over a
// grid-stride loop, so any n fits a bounded grid.
constexpr int kBlock = 256;
constexpr int64_t kMaxBlocksElementwise = 8192;
constexpr int64_t kMaxBlocksReduce = 1024;

inline int blocks_for(int64_t n, int64_t max_blocks) {
  const int64_t b = (n + kBlock - 1) / kBlock;
  return static_cast<int>(std::max<int64_t>(1, std::min(b, max_blocks)));
}

__device__ __forceinline__ int64_t first_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() {
  return static_cast<int64_t>(blockDim.x) * gridDim.x;
}

struct Sum {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct Min {
  template <typename T>
  __device__ T operator()(T a, T b) const { return b < a ? b : a; }
};
struct Max {
  template <typename T>
  __device__ T operator()(T a, T b) const { return b > a ? b : a; }
};

// Tree reduction over one block of exactly kBlock threads; every thread gets the result.
template <typename T, typename Op>
__device__ T block_reduce(T v, T* shared, Op op) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int s = kBlock / 2; s > 0; s >>= 1) {
    const int t = static_cast<int>(threadIdx.x);
    if (t < s) shared[t] = op(shared[t], shared[t + s]);
    __syncthreads();
  }
  const T r = shared[0];
  __syncthreads();  // shared is reused by the next reduction
  return r;
}

// ---- fake quantization ----------------------------------------------------------------------

// y may alias x: each element is read and written by the same thread.
template <Rounding R, typename T>
__global__ void fake_quant_tensor_kernel(const float* x, float* y, int64_t n, T inv, T scale,
                                         T qlo, T qhi) {
  for (int64_t i = first_index(); i < n; i += grid_stride())
    y[i] = fake_quant_one<R, T>(x[i], inv, scale, qlo, qhi);
}

// params holds [inv | scale | qlo | qhi], `channels` values each.
template <Rounding R, typename T>
__global__ void fake_quant_channel_kernel(const float* x, float* y, int64_t n, int64_t channels,
                                          int64_t inner, const T* params) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const int64_t c = (i / inner) % channels;
    y[i] = fake_quant_one<R, T>(x[i], params[c], params[channels + c], params[2 * channels + c],
                                params[3 * channels + c]);
  }
}

template <Rounding R, typename T>
void launch_fake_quant_tensor(const float* x, float* y, int64_t n, double scale, double offset,
                              double steps, cudaStream_t stream) {
  // The parameters are rounded to T exactly as on the CPU, so results match bit for bit.
  const T s = static_cast<T>(scale);
  const T inv = T(1) / s;
  const T qlo = static_cast<T>(offset), qhi = static_cast<T>(offset + steps);
  fake_quant_tensor_kernel<R, T><<<blocks_for(n, kMaxBlocksElementwise), kBlock, 0, stream>>>(
      x, y, n, inv, s, qlo, qhi);
  check_launch("fake_quant_tensor_kernel");
}

template <Rounding R, typename T>
void launch_fake_quant_channel(const float* x, float* y, int64_t outer, int64_t channels,
                               int64_t inner, const double* scale, const double* offset,
                               double steps, cudaStream_t stream) {
  std::vector<T> host(4 * static_cast<size_t>(channels));
  for (int64_t c = 0; c < channels; ++c) {
    const T s = static_cast<T>(scale[c]);
    host[c] = T(1) / s;
    host[channels + c] = s;
    host[2 * channels + c] = static_cast<T>(offset[c]);
    host[3 * channels + c] = static_cast<T>(offset[c] + steps);
  }
  DeviceBuffer<T> params(host.size());
  QA_CUDA_CHECK(cudaMemcpyAsync(params.get(), host.data(), params.bytes(), cudaMemcpyHostToDevice, stream));
  const int64_t n = outer * channels * inner;
  fake_quant_channel_kernel<R, T><<<blocks_for(n, kMaxBlocksElementwise), kBlock, 0, stream>>>(
      x, y, n, channels, inner, params.get());
  check_launch("fake_quant_channel_kernel");
  // `params` and `host` must outlive the copy and the kernel.
  QA_CUDA_CHECK(cudaStreamSynchronize(stream));
}

inline void fake_quant_per_tensor(const float* x, float* y, int64_t n, double scale,
                                  double offset, double steps, Rounding rounding,
                                  bool use_double, cudaStream_t stream) {
  if (n == 0) return;
  QA_DISPATCH(rounding, use_double, launch_fake_quant_tensor, x, y, n, scale, offset, steps,
                   stream);
}

inline void fake_quant_per_channel(const float* x, float* y, int64_t outer, int64_t channels,
                                   int64_t inner, const double* scale, const double* offset,
                                   double steps, Rounding rounding, bool use_double,
                                   cudaStream_t stream) {
  if (outer * channels * inner == 0) return;
  QA_DISPATCH(rounding, use_double, launch_fake_quant_channel, x, y, outer, channels, inner,
                   scale, offset, steps, stream);
}


// ---- min / max ------------------------------------------------------------------------------

struct MinMaxPart {
  float lo, hi;
  unsigned long long nan, posinf, neginf;
};

// As the CPU: non-finite values are replaced by neutral elements and counted.
__global__ void minmax_kernel(const float* x, int64_t n, MinMaxPart* parts) {
  __shared__ float sf[kBlock];
  __shared__ unsigned long long su[kBlock];
  float lo = INFINITY, hi = -INFINITY;
  unsigned long long nan = 0, posinf = 0, neginf = 0;
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const float v = x[i];
    const bool finite = is_finite(v);
    lo = fminf(lo, finite ? v : INFINITY);
    hi = fmaxf(hi, finite ? v : -INFINITY);
    nan += (v != v);
    posinf += (v == INFINITY);
    neginf += (v == -INFINITY);
  }
  MinMaxPart p;
  p.lo = block_reduce(lo, sf, Min());
  p.hi = block_reduce(hi, sf, Max());
  p.nan = block_reduce(nan, su, Sum());
  p.posinf = block_reduce(posinf, su, Sum());
  p.neginf = block_reduce(neginf, su, Sum());
  if (threadIdx.x == 0) parts[blockIdx.x] = p;
}

struct MinMaxResult {
  double lo, hi;
  int64_t n_nan, n_posinf, n_neginf;
};

inline MinMaxResult minmax(const float* x, int64_t n, cudaStream_t stream) {
  MinMaxResult r{INFINITY, -INFINITY, 0, 0, 0};
  if (n == 0) return r;
  const int blocks = blocks_for(n, kMaxBlocksReduce);
  DeviceBuffer<MinMaxPart> parts(blocks);
  minmax_kernel<<<blocks, kBlock, 0, stream>>>(x, n, parts.get());
  check_launch("minmax_kernel");
  std::vector<MinMaxPart> host(blocks);
  QA_CUDA_CHECK(cudaMemcpyAsync(host.data(), parts.get(), parts.bytes(), cudaMemcpyDeviceToHost, stream));
  QA_CUDA_CHECK(cudaStreamSynchronize(stream));
  float lo = INFINITY, hi = -INFINITY;
  for (const MinMaxPart& p : host) {
    lo = std::min(lo, p.lo);
    hi = std::max(hi, p.hi);
    r.n_nan += static_cast<int64_t>(p.nan);
    r.n_posinf += static_cast<int64_t>(p.posinf);
    r.n_neginf += static_cast<int64_t>(p.neginf);
  }
  r.lo = lo;
  r.hi = hi;
  return r;
}

// ---- histogram ------------------------------------------------------------------------------

// Exactly the CPU's bin_of: double arithmetic, clamped to [0, nbins - 1].
__device__ __forceinline__ int64_t bin_of(float v, double lo, double inv_width, int64_t nbins) {
  double f = (static_cast<double>(v) - lo) * inv_width;
  f = fmin(fmax(f, 0.0), static_cast<double>(nbins - 1));
  return static_cast<int64_t>(f);
}

// Bins up to this many fit a per-block sub-histogram in the default 48 KiB of shared memory.
constexpr int64_t kSharedBins = 48 * 1024 / sizeof(unsigned long long);

// kShared: count into a per-block sub-histogram first, then add it to `counts` once per bin;
// otherwise (too many bins for shared memory) count straight into `counts`.
template <bool kShared>
__global__ void histogram_kernel(const float* x, int64_t n, double lo, double inv_width,
                                 unsigned long long* counts, int64_t nbins) {
  extern __shared__ unsigned long long sub[];
  unsigned long long* h = kShared ? sub : counts;
  if (kShared) {
    for (int64_t b = threadIdx.x; b < nbins; b += blockDim.x) sub[b] = 0;
    __syncthreads();
  }
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const float v = x[i];
    if (is_finite(v)) atomicAdd(&h[bin_of(v, lo, inv_width, nbins)], 1ULL);
  }
  if (kShared) {
    __syncthreads();
    for (int64_t b = threadIdx.x; b < nbins; b += blockDim.x)
      if (sub[b] != 0) atomicAdd(&counts[b], sub[b]);
  }
}

// Adds the finite values of x to the host array counts[nbins].
inline void histogram_add(const float* x, int64_t n, double lo, double width, int64_t* counts,
                          int64_t nbins, cudaStream_t stream) {
  if (n == 0) return;
  const double inv_width = 1.0 / width;
  DeviceBuffer<unsigned long long> device_counts(nbins);
  QA_CUDA_CHECK(cudaMemsetAsync(device_counts.get(), 0, device_counts.bytes(), stream));
  const int blocks = blocks_for(n, kMaxBlocksReduce);
  if (nbins <= kSharedBins) {
    const size_t shared = static_cast<size_t>(nbins) * sizeof(unsigned long long);
    histogram_kernel<true><<<blocks, kBlock, shared, stream>>>(x, n, lo, inv_width,
                                                               device_counts.get(), nbins);
  } else {
    histogram_kernel<false><<<blocks, kBlock, 0, stream>>>(x, n, lo, inv_width,
                                                           device_counts.get(), nbins);
  }
  check_launch("histogram_kernel");
  std::vector<unsigned long long> host(nbins);
  QA_CUDA_CHECK(cudaMemcpyAsync(host.data(), device_counts.get(), device_counts.bytes(),
                                cudaMemcpyDeviceToHost, stream));
  QA_CUDA_CHECK(cudaStreamSynchronize(stream));
  for (int64_t b = 0; b < nbins; ++b) counts[b] += static_cast<int64_t>(host[b]);
}

// ---- error statistics -----------------------------------------------------------------------

struct ErrorPart {
  double sse, srr, stt, dot, max_abs;
  unsigned long long finite;
};

// As the CPU's error_run: non-finite pairs contribute zeros and are counted apart.
__global__ void error_stats_kernel(const float* ref, const float* test, int64_t n, ErrorPart* parts) {
  __shared__ double sd[kBlock];
  __shared__ unsigned long long su[kBlock];
  double sse = 0, srr = 0, stt = 0, dot = 0, mx = 0;
  unsigned long long finite = 0;
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const double r = ref[i], t = test[i];
    const bool ok = is_finite(r) && is_finite(t);
    const double rr = ok ? r : 0.0, tt = ok ? t : 0.0;
    const double d = rr - tt;
    sse += d * d;
    srr += rr * rr;
    stt += tt * tt;
    dot += rr * tt;
    mx = fmax(mx, fabs(d));
    finite += ok;
  }
  ErrorPart p;
  p.sse = block_reduce(sse, sd, Sum());
  p.srr = block_reduce(srr, sd, Sum());
  p.stt = block_reduce(stt, sd, Sum());
  p.dot = block_reduce(dot, sd, Sum());
  p.max_abs = block_reduce(mx, sd, Max());
  p.finite = block_reduce(finite, su, Sum());
  if (threadIdx.x == 0) parts[blockIdx.x] = p;
}

// acc (host, 7 doubles): [sum (r-t)^2, sum r^2, sum t^2, sum r*t, max |r-t|, n finite, n non-finite]
constexpr int kErrorStatsSize = 7;

inline void error_stats(const float* ref, const float* test, int64_t n, double* acc,
                        cudaStream_t stream) {
  if (n == 0) return;
  const int blocks = blocks_for(n, kMaxBlocksReduce);
  DeviceBuffer<ErrorPart> parts(blocks);
  error_stats_kernel<<<blocks, kBlock, 0, stream>>>(ref, test, n, parts.get());
  check_launch("error_stats_kernel");
  std::vector<ErrorPart> host(blocks);
  QA_CUDA_CHECK(cudaMemcpyAsync(host.data(), parts.get(), parts.bytes(), cudaMemcpyDeviceToHost, stream));
  QA_CUDA_CHECK(cudaStreamSynchronize(stream));
  double sse = 0, srr = 0, stt = 0, dot = 0, mx = 0;
  unsigned long long finite = 0;
  for (const ErrorPart& p : host) {
    sse += p.sse;
    srr += p.srr;
    stt += p.stt;
    dot += p.dot;
    mx = std::max(mx, p.max_abs);
    finite += p.finite;
  }
  acc[0] += sse;
  acc[1] += srr;
  acc[2] += stt;
  acc[3] += dot;
  acc[4] = std::max(acc[4], mx);
  acc[5] += static_cast<double>(finite);
  acc[6] += static_cast<double>(static_cast<unsigned long long>(n) - finite);
}

}  // namespace cuda
}  // namespace qa
