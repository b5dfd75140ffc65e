// Device helpers shared by the CUDA kernels, written once for two compilers:
//   nvcc (device pass, __CUDA_ARCH__ defined)  -> the real instructions (inline PTX);
//   g++ with csrc/sim/simt.h (DRN_SIMT_HOST)    -> host models of the same instructions;
//   nvcc host pass                              -> declarations only (these are __device__ functions).
// Element types: on the GPU float, __half, __nv_bfloat16; in the simulator float, c10::Half, c10::BFloat16.
// Both 16-bit types are IEEE/bfloat16 bit patterns, so the host launcher reinterprets at::Half storage freely.
//
// Which path each architecture takes: sm_80 and sm_90 both run mma.sync.m16n8k16 (fp16/bf16) fed by cp.async
// and ldmatrix;
// there is no wgmma/TMA path (the simulator could not model it, and mma.sync runs on sm_90 at reduced peak).
#pragma once

#include <cstdint>
#include <type_traits>

#if defined(DRN_SIMT_HOST)
#include <cmath>
#include <cstring>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace drn {

#if defined(DRN_SIMT_HOST)
using half_t = c10::Half;
using bf16_t = c10::BFloat16;
#else
using half_t = __half;
using bf16_t = __nv_bfloat16;
#endif

__device__ __forceinline__ float to_float(float v) { return v; }
#if defined(DRN_SIMT_HOST)
inline float to_float(half_t v) { return static_cast<float>(v); }
inline float to_float(bf16_t v) { return static_cast<float>(v); }
#else
__device__ __forceinline__ float to_float(half_t v) { return __half2float(v); }
__device__ __forceinline__ float to_float(bf16_t v) { return __bfloat162float(v); }
#endif

template <class T>
__device__ __forceinline__ T from_float(float v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
#if defined(DRN_SIMT_HOST)
    return T(v);  // c10 rounds to nearest even, like __float2half_rn / __float2bfloat16_rn
#else
    if constexpr (std::is_same_v<T, half_t>) return __float2half_rn(v);
    else return __float2bfloat16_rn(v);
#endif
  }
}

__device__ __forceinline__ bool is_nan(float v) { return v != v; }
__device__ __forceinline__ bool is_finite(float v) { return v - v == 0.f; }  // false for NaN and +-inf

// High 64 bits of the 128-bit product a * b.
__device__ __forceinline__ uint64_t umulhi64(uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(a, b);
#else
  return static_cast<uint64_t>((static_cast<unsigned __int128>(a) * b) >> 64);
#endif
}

// Division by a divisor fixed for a launch, without a divide instruction or a call: n / d = (magic * 2n) >> (64 +
// shift) for 0 <= n < 2^63 and 1 <= d < 2^31, with shift = ceil(log2 d) and magic = ceil(2^(63 + shift) / d) < 2^64
// (Granlund and Montgomery 1994, theorem 4.2 with N = 63: magic * d - 2^(63 + shift) < d <= 2^shift). The host
// computes it once per launch (make_fast_div); the kernel then divides with one 64-bit high multiply and a shift,
// where a runtime int64 division would be an out-of-line routine (a CALL in SASS) and an int32 one a ~20-instruction
// sequence.
struct FastDiv {
  uint64_t magic = uint64_t(1) << 63;  // d = 1
  int shift = 0;
  __device__ __forceinline__ int64_t div(int64_t n) const {
    return static_cast<int64_t>(umulhi64(magic, static_cast<uint64_t>(n) << 1) >> shift);
  }
};

inline FastDiv make_fast_div(int64_t d) {  // host side; 1 <= d < 2^31 (checked by the callers' index limits)
  FastDiv f;
  while ((int64_t(1) << f.shift) < d) ++f.shift;
  const unsigned __int128 num = static_cast<unsigned __int128>(1) << (63 + f.shift);
  f.magic = static_cast<uint64_t>((num + static_cast<unsigned __int128>(d) - 1) / static_cast<unsigned __int128>(d));
  return f;
}

// Dynamic shared memory of the block (the size is the launch's). The kernels using it declare no static shared
// memory, so it starts at the block's shared window, which is 128-byte aligned: the bank arithmetic of the
// swizzled layouts holds for absolute addresses. The simulator hands out a 128-byte-aligned buffer per launch.
__device__ __forceinline__ void* dynamic_shared_memory() {
#if defined(DRN_SIMT_HOST)
  return sim::dynamic_shared();
#else
  extern __shared__ __align__(128) unsigned char drn_dynamic_smem[];
  return drn_dynamic_smem;
#endif
}

// A shared-memory address as ldmatrix and cp.async take it: on the GPU the 32-bit offset in the shared window
// (converted from a pointer once, so address arithmetic in a loop is 32-bit byte arithmetic), in the simulator the
// host pointer.
#if defined(DRN_SIMT_HOST)
using smem_addr_t = unsigned char*;
#else
using smem_addr_t = uint32_t;
#endif

__device__ __forceinline__ smem_addr_t smem_addr(const void* p) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
#elif defined(DRN_SIMT_HOST)
  return static_cast<unsigned char*>(const_cast<void*>(p));
#else
  return 0;
#endif
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: four 8x8 matrices of 16-bit elements from shared memory, one
// instruction per warp. Lane l gives the (16-byte aligned) address of row l % 8 of matrix l / 8; register j of
// lane l receives elements (l / 4, 2 * (l % 4)) and (l / 4, 2 * (l % 4) + 1) of matrix j — the mma fragment layout.
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], smem_addr_t row) {
#if defined(__CUDA_ARCH__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(row));
#elif defined(DRN_SIMT_HOST)
  sim::ldmatrix_x4(r, row);
#endif
}

// 16-byte global->shared copy; zero-fills when !valid (src is then never read, but must be a mapped address).
__device__ __forceinline__ void cp_async16(smem_addr_t smem, const void* gmem, bool valid) {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(gmem), "r"(valid ? 16 : 0));
#elif defined(DRN_SIMT_HOST)
  sim::log_store16(smem);
  if (valid) std::memcpy(smem, gmem, 16);
  else std::memset(smem, 0, 16);
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Wait until at most `Pending` committed groups are still in flight (the simulator copies synchronously).
template <int Pending>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending));
#endif
}

// c[0..3] += A(16x16) * B(16x8) on tensor cores, T = half_t or bf16_t, fragments in the PTX ISA layout.
template <class T>
__device__ __forceinline__ void mma_m16n8k16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
  static_assert(std::is_same_v<T, half_t> || std::is_same_v<T, bf16_t>, "mma_m16n8k16 takes fp16 or bf16");
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<T, half_t>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#elif defined(DRN_SIMT_HOST)
  sim::mma_m16n8k16(c, a, b, [](uint16_t bits) {
    T v;
    std::memcpy(&v, &bits, 2);
    return static_cast<float>(v);
  });
#endif
}

// torch.argmax order: NaN beats everything (the first NaN wins), otherwise larger wins, ties go to the lower
// index. Total and symmetric, so any reduction tree gives the same answer.
__device__ __forceinline__ bool argmax_better(float a, int64_t ia, float b, int64_t ib) {
  const bool na = is_nan(a), nb = is_nan(b);
  if (na || nb) return na && (!nb || ia < ib);
  return a > b || (a == b && ia < ib);
}

}  // namespace drn
