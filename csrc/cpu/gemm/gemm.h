// The CPU backend's own float32 GEMM: the (tiles × C)·(C × K) products of the Winograd convolution
// (winograd/winograd.cpp), one per transform point ξ: register blocks in microkernel.h, their blocking and threads in
// gemm.cpp, the packing of b in pack.cpp.
//
// Why not MKL (at::bmm): MKL's sgemm is fast on Intel and slow on AMD (well under half the FMA peak on the
// Winograd shapes there: docs/performance/cpu.md), and its small-M shapes (49 tiles for a
// 224×224 image at 1/8 resolution) waste much of it on any vendor. These kernels depend only on the ISA
// (AVX-512F or AVX2+FMA, chosen as the transforms are: cpu_isa()), so they run alike on every x86 vendor.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>

#include <cstdint>
#include <vector>

namespace drn::cpu {

// B's packed layout: column panels of kPanel output columns, each (rows × kPanel) row-major, the last one padded
// with zero columns. A panel row is two AVX-512 (four AVX2) registers; packing once keeps the kernels' B reads
// sequential and free of edge cases.
constexpr int64_t kPanel = 32;

inline int64_t panels_of(int64_t n) { return n / kPanel + (n % kPanel != 0); }  // no overflow near 2⁶³

// A row stride for an a of `k` columns that the caller lays out itself (the Winograd V chunk): k plus one cache
// line, so that the GEMM kernel's MR rows, read together, do not fall into the same few L1 sets (a stride of a
// multiple of 1-2 KB — 256 or 512 channels — puts all 14 rows in two of L1's 64 sets, where they evict each other).
inline int64_t padded_row(int64_t k) { return k + 16; }

// Packs src (rows × n, row-major, row stride `ld`) into dst (panels_of(n) × rows × kPanel floats).
void pack_b(const float* src, int64_t rows, int64_t n, int64_t ld, float* dst);

// The rows [begin, end) of one problem's c that a caller needs (the Winograd convolution skips the tiles whose
// outputs at a transform point are all outside the image).
struct RowRange {
  int64_t begin, end;
};

// c[i][j] = Σ_p a[i][p] · b[p][j] for i < m, j < panels·kPanel (the padded columns come out 0), for each of
// `batch` independent problems: a + t·a_batch (m × k, row stride lda), packed b + t·b_batch (pack_b), c + t·c_batch
// (m × panels·kPanel, row stride ldc ≥ panels·kPanel). rows (batch entries, or nullptr for all m): only rows
// rows[t].begin ≤ i < rows[t].end of problem t are computed, the others left as they are. Threads: torch's, over
// (problem, panel) pairs, each starting on about the same number of rows and taking from the others' once done
// (parallel.h); call it from outside any parallel region.
void gemm_packed(int64_t batch, int64_t m, int64_t k, int64_t panels, const float* a, int64_t lda, int64_t a_batch,
                 const float* b, int64_t b_batch, float* c, int64_t ldc, int64_t c_batch,
                 const RowRange* rows = nullptr);

// The rows of gemm_packed's (bf16: gemm_packed_bf16's) register blocks on this CPU (cpu_isa()): a problem whose row
// count is a multiple of it has no partial block (AVX-512 and bf16: 14, AVX2: 6, baseline: 4).
int64_t gemm_block_rows(bool bf16);

// bfloat16: whether gemm_packed_bf16 runs here (AVX512-BF16, and DRN_CPU_ISA allows AVX-512).
bool gemm_bf16_supported();

// pack_b for gemm_packed_bf16: src (rows × n float32, rounded to bfloat16 here) into panels_of(n) × ceil(rows/2) ×
// kPanel × 2 (each 32-bit lane a pair of consecutive rows of one column; an odd last row paired with a zero).
void pack_b_bf16(const float* src, int64_t rows, int64_t n, int64_t ld, c10::BFloat16* dst);

// gemm_packed with bfloat16 a and b and float32 c: `pairs` = k / 2 (a's rows padded to an even length with zeros
// by the caller; lda and a_batch even), b from pack_b_bf16. Products are exact in float32; each step adds two.
void gemm_packed_bf16(int64_t batch, int64_t m, int64_t pairs, int64_t panels, const c10::BFloat16* a, int64_t lda,
                      int64_t a_batch, const c10::BFloat16* b, int64_t b_batch, float* c, int64_t ldc,
                      int64_t c_batch, const RowRange* rows = nullptr);

// The packed layout's shape for `batch` (k × n) matrices: float32 (batch, panels_of(n), k, kPanel), bfloat16
// (batch, panels_of(n), ceil(k/2), kPanel, 2). The one rule: the Winograd weight form and the test library's
// gemm_pack_b use it.
std::vector<int64_t> packed_shape(int64_t batch, int64_t k, int64_t n, bool bf16);

// `batch` consecutive (k × n) row-major float32 matrices at src, packed (pack_b, or pack_b_bf16 when bf16) into a
// new tensor of packed_shape with `options` (its dtype float32 or bfloat16, as bf16 says); in parallel over batch.
at::Tensor pack_batch(const float* src, int64_t batch, int64_t k, int64_t n, bool bf16,
                      const at::TensorOptions& options);

}  // namespace drn::cpu
