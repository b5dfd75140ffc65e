// The CPU kernels' SIMD vocabulary: the one place where csrc/cpu meets the x86 instruction set.
//
// Vectors are GCC vector types: +, -, *, comparisons, shifts and lane access are plain C++ operators, so one kernel
// source compiles for every instruction set its function's target attribute names (f32x16 is one AVX-512
// register, or two AVX2 ones). What the operators cannot say is here, once per ISA, as the static functions of
// Avx512, Avx512Bf16, Avx2 and Baseline: broadcast, the fused multiply-add, bfloat16 pair dot products and
// rounding. Intrinsics (immintrin.h) appear in this file only.
//
// fma is explicit: a·b + c written with operators is fused only where the compiler contracts it (GCC does by
// default in C++, -std=c++20 included, where the target has FMA; only its ISO C modes do not), and the kernels'
// results must not depend on compiler defaults.
//
// How a kernel uses it: its body is a template on the ISA struct S (always_inline, no target attribute, calling
// S::fma etc.), instantiated by an entry point per ISA that carries DRN_TARGET_<ISA> and [[gnu::flatten]]. The
// ISA functions carry their own target attribute, so GCC can inline them only into code compiled for that ISA:
// flatten inlines the body into the entry point and then the ISA functions into it. (Declared always_inline they
// would have to be inlined into the untargeted body on its own, which GCC refuses.)
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

// Functions that take or return 64-byte vectors are inlined into their ISA's entry point, so the baseline ABI for
// passing them (what -Wpsabi warns about) is never used across a call.
#pragma GCC diagnostic ignored "-Wpsabi"

// The target attributes of the kernels' entry points, one per ISA (cpu_isa(): kAvx512 needs F+DQ+VL).
#define DRN_TARGET_AVX512 gnu::target("avx512f,avx512dq,avx512vl,avx2,fma")
#define DRN_TARGET_AVX512_BF16 gnu::target("avx512f,avx512dq,avx512vl,avx512bf16,avx2,fma")
#define DRN_TARGET_AVX2 gnu::target("avx2,fma")

// Auto-vectorised loops compiled for each ISA and picked when the library loads (GCC function multi-versioning):
// the class head's plain C++ loops.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DRN_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DRN_MULTIVERSION
#endif

namespace drn::cpu::simd {

typedef float f32x16 __attribute__((vector_size(64), may_alias));
typedef float f32x8 __attribute__((vector_size(32), may_alias));
typedef uint32_t u32x16 __attribute__((vector_size(64), may_alias));
typedef uint16_t u16x16 __attribute__((vector_size(32), may_alias));
typedef uint16_t bf16x32 __attribute__((vector_size(64), may_alias));  // 16 pairs of bfloat16 bit patterns

// ---- memory: unaligned, may alias anything ---------------------------------------------------------------------

// V with the alignment of its lanes: a load or store of it may sit at any element.
template <class Lane, std::size_t Bytes>
struct Unaligned {
  typedef Lane type __attribute__((vector_size(Bytes), aligned(alignof(Lane)), may_alias));
};
template <class V>
using unaligned_t = typename Unaligned<std::remove_cvref_t<decltype(V{}[0])>, sizeof(V)>::type;

template <class V, class E>
[[gnu::always_inline]] inline V load(const E* p) {
  return *reinterpret_cast<const unaligned_t<V>*>(p);
}
template <class V, class E>
[[gnu::always_inline]] inline void store(E* p, V v) {
  *reinterpret_cast<unaligned_t<V>*>(p) = v;
}

// __builtin_prefetch(base + offset elements, Write, Locality: 3 into L1, 2 into L2). The address is computed as an
// integer: a pointer past the end of an array (a block's "next" rows, the slice after a panel's last one) would be
// undefined behaviour, while a prefetch of any address never faults.
template <int Write, int Locality, class E>
[[gnu::always_inline]] inline void prefetch(const E* base, int64_t offset) {
  __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<std::uintptr_t>(base) + sizeof(E) * offset),
                     Write, Locality);
}

// Every lane x, for compile-time constants: x − 0 is x exactly (−0 included) and folds to a vector constant. GCC
// builds a value known only at run time lane by lane: use S::broadcast (one instruction) for those.
template <class V>
[[gnu::always_inline]] inline V splat(float x) {
  return x - V{};
}

// bfloat16 ↔ float32 with operators only: widen exactly; narrow rounding to nearest even, NaN as 0x7FC0 — bit for
// bit c10::BFloat16's conversion (torch's).
[[gnu::always_inline]] inline f32x16 widen_bf16(u16x16 h) {
  return (f32x16)(__builtin_convertvector(h, u32x16) << 16);
}
[[gnu::always_inline]] inline u16x16 narrow_bf16(f32x16 v) {
  const u32x16 w = (u32x16)v;
  const u32x16 rounded = (w + 0x7FFFu + ((w >> 16) & 1u)) >> 16;
  const u32x16 out = (w & 0x7FFFFFFFu) > 0x7F800000u ? u32x16{} + 0x7FC0u : rounded;
  return __builtin_convertvector(out, u16x16);
}

// ---- the ISAs ----------------------------------------------------------------------------------------------------
// fma(a, b, c) = a·b + c with one rounding. mul_add(a, b, c) = a·b + c as the ISA computes it best: fused where it
// has FMA (AVX-512, AVX2), a product and a sum, each rounded, where it has not (the x86-64 baseline, SSE2).

struct Avx512 {
  [[DRN_TARGET_AVX512]] static inline f32x16 broadcast(float x) { return (f32x16)_mm512_set1_ps(x); }
  [[DRN_TARGET_AVX512]] static inline f32x16 fma(f32x16 a, f32x16 b, f32x16 c) {
    return (f32x16)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
  }
  [[DRN_TARGET_AVX512]] static inline f32x16 mul_add(f32x16 a, f32x16 b, f32x16 c) { return fma(a, b, c); }
};

struct Avx512Bf16 : Avx512 {
  // The 32-bit pair at p (two consecutive bfloat16) in every lane.
  [[DRN_TARGET_AVX512_BF16]] static inline bf16x32 broadcast_pair(const uint16_t* p) {
    int32_t pair;
    std::memcpy(&pair, p, sizeof pair);
    return (bf16x32)_mm512_set1_epi32(pair);
  }
  // acc + a[2i]·b[2i] + a[2i+1]·b[2i+1] per float32 lane i (vdpbf16ps: the products exact, one rounding)
  [[DRN_TARGET_AVX512_BF16]] static inline f32x16 dot_pairs(f32x16 acc, bf16x32 a, bf16x32 b) {
    return (f32x16)_mm512_dpbf16_ps((__m512)acc, (__m512bh)a, (__m512bh)b);
  }
  // float32 → bfloat16 in one instruction (vcvtneps2bf16) instead of simd::narrow_bf16's seven: the same rounding
  // to nearest even, except that float32 subnormals become ±0 and NaN payloads are kept (quieted).
  [[DRN_TARGET_AVX512_BF16]] static inline u16x16 narrow_bf16(f32x16 v) {
    return (u16x16)_mm512_cvtneps_pbh((__m512)v);
  }
};

struct Avx2 {
  [[DRN_TARGET_AVX2]] static inline f32x8 broadcast(float x) { return (f32x8)_mm256_set1_ps(x); }
  [[DRN_TARGET_AVX2]] static inline f32x8 fma(f32x8 a, f32x8 b, f32x8 c) {
    return (f32x8)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
  }
  // f32x16 as two registers
  [[DRN_TARGET_AVX2]] static inline f32x16 fma(f32x16 a, f32x16 b, f32x16 c) {
    f32x8 x[2], y[2], z[2];
    std::memcpy(x, &a, sizeof a);
    std::memcpy(y, &b, sizeof b);
    std::memcpy(z, &c, sizeof c);
    z[0] = fma(x[0], y[0], z[0]);
    z[1] = fma(x[1], y[1], z[1]);
    f32x16 r;
    std::memcpy(&r, z, sizeof r);
    return r;
  }
  [[DRN_TARGET_AVX2]] static inline f32x16 mul_add(f32x16 a, f32x16 b, f32x16 c) { return fma(a, b, c); }
};

struct Baseline {
  static inline f32x16 mul_add(f32x16 a, f32x16 b, f32x16 c) {
    const f32x16 product = a * b;
    return product + c;
  }
};

}  // namespace drn::cpu::simd
