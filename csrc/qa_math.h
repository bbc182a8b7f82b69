// Scalar math shared by the CPU and CUDA kernels: rounding, NaN-keeping clamp, one fake-quant step.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define QA_HD __host__ __device__ __forceinline__
#else
#define QA_HD inline
#endif

namespace qa {

enum class Rounding : int { HalfEven = 0, HalfAway = 1 };

// Comparisons with NaN are false, so NaN passes through both branches unchanged.
template <typename T>
QA_HD T clamp_keep_nan(T v, T lo, T hi) {
  v = v < lo ? lo : v;
  v = v > hi ? hi : v;
  return v;
}

// Adding and removing 1.5 * 2^(mantissa bits) rounds to an integer with ties to even
// (the default FP mode) and vectorizes on every x86-64, unlike nearbyint before SSE4.1.
// Valid for |v| < 2^22 (float) / 2^51 (double); callers clamp first, which keeps them there.
// Needs IEEE semantics: never build these files with -ffast-math / -fassociative-math.
template <typename T> struct RoundMagic;
template <> struct RoundMagic<float> { static constexpr float value = 12582912.0f; };
template <> struct RoundMagic<double> { static constexpr double value = 6755399441055744.0; };

template <typename T>
QA_HD T round_half_even(T v) {
#if defined(__CUDA_ARCH__)
  return rint(v);
#else
  return (v + RoundMagic<T>::value) - RoundMagic<T>::value;
#endif
}

// Ties away from zero, derived from ties-to-even: only exact ties rounded towards zero move.
template <typename T>
QA_HD T round_half_away(T v) {
  T r = round_half_even(v);
  T d = v - r;  // exact, in [-0.5, 0.5]
  r += (d == T(0.5) && v > T(0)) ? T(1) : T(0);
  r -= (d == T(-0.5) && v < T(0)) ? T(1) : T(0);
  return r;
}

template <Rounding R, typename T>
QA_HD T round_int(T v) {
  if constexpr (R == Rounding::HalfEven) return round_half_even(v);
  else return round_half_away(v);
}

// One element: x_hat = clamp(round(x * inv_scale), qlo, qhi) * scale, where qlo = offset and
// qhi = offset + num_steps. Clamping before rounding equals rounding first (the bounds are
// integers) and keeps the value inside the exact range of round_half_even.
template <Rounding R, typename T>
QA_HD float fake_quant_one(float x, T inv_scale, T scale, T qlo, T qhi) {
  T v = clamp_keep_nan(static_cast<T>(x) * inv_scale, qlo, qhi);
  return static_cast<float>(round_int<R>(v) * scale);
}

// The one place where runtime options (rounding, float or double) become template parameters.
#define QA_DISPATCH(rounding, use_double, FN, ...)                                   \
  do {                                                                               \
    if ((rounding) == ::qa::Rounding::HalfEven) {                                    \
      if (use_double) FN<::qa::Rounding::HalfEven, double>(__VA_ARGS__);             \
      else FN<::qa::Rounding::HalfEven, float>(__VA_ARGS__);                         \
    } else {                                                                         \
      if (use_double) FN<::qa::Rounding::HalfAway, double>(__VA_ARGS__);             \
      else FN<::qa::Rounding::HalfAway, float>(__VA_ARGS__);                         \
    }                                                                                \
  } while (0)

// a - a is 0 for finite a and NaN for NaN and +-inf; branch-free and vectorizable.
template <typename T>
QA_HD bool is_finite(T a) { return (a - a) == T(0); }

}  // namespace qa
