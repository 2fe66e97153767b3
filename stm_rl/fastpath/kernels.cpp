// Fused CPU kernels for the STM's relational memory, the gated write into its item memory and SAM's scores,
// and the ELU of the small frame encoder (issue 10), loaded by stm_rl/fastpath/kernels.py.
//
// Each kernel makes one pass over the B x N x d x d tensors it touches, where the PyTorch
// composition of the same step makes several (a scaling, a batched product, a sum of two
// gradients, ...): on CPUs the step is bound by that memory traffic. The memory is seen as
// B samples of R = N*d rows of d numbers; every row is processed while it sits in L1, and the
// small operands (scores, values, the mixed read gradient) are reused across rows.
//
// Plain C interfaces over raw pointers (called through ctypes), single-threaded, one instance for
// float and one for double (the gradient checks). The relational memory and its gradients are in
// that one type throughout (under bf16 autocast too: since issue 27 the readout reads M_r itself);
// bf16 (uint16_t) appears only in the ELU kernels, for the encoder's bf16 activations.
//
// Notation (paper eqs. 11-12, spec STM.md section 3 steps 5-6):
//   memory   M_r_prev [B, R, d] (sample stride memory_stride: 0 when expanded over the batch)
//   scores   [B, N, R]: scores[j][n*d + a] = tanh(q_n[a] * k_j[a])
//   values   [B, N, d]: v_j
//   update   M_r = alpha1 * M_r_prev + sum_j scores[j] (x) v_j
//   read     mixed = sum_n p_n M_r_prev[n] (its gradient dmixed = w (x) d v_r comes in ready)

#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
// The hand-written AVX-512 versions ("twins") of some kernels, compiled where the CPU has AVX-512F unless
// STM_RL_NO_TWINS is defined (STM_RL_FUSED_KERNELS=loops: every kernel is then its portable loop, which the
// compiler vectorises for this CPU; benchmarks/train_speed.py --fused-kernels auto loops measures what they pay).
#if defined(__AVX512F__) && !defined(STM_RL_NO_TWINS)
#define STM_RL_TWINS 1
#endif
// One family of twins left out (STM_RL_FUSED_KERNELS=no-<family>-twin), to measure what each pays on its own:
// STM_RL_NO_TWIN_UPDATE (the relational update's backward pass), STM_RL_NO_TWIN_GATED_WRITE (eq. 10 both ways),
// STM_RL_NO_TWIN_TANH (tanh and SAM's scores), STM_RL_NO_TWIN_ELU (the encoder's ELU both ways).

namespace {

inline float bf16_to_float(uint16_t bits) {
    uint32_t wide = static_cast<uint32_t>(bits) << 16;
    float value;
    std::memcpy(&value, &wide, sizeof value);
    return value;
}

// Round to nearest even, as PyTorch's float -> bf16 conversion does (NaN stays a quiet NaN).
inline uint16_t float_to_bf16(float value) {
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    return value != value ? static_cast<uint16_t>(0x7FC0u) : static_cast<uint16_t>(rounded);
}

constexpr int64_t kMaxSide = 1024;  // d; the Python side refuses larger memories
constexpr int64_t kMaxSlots = 256;  // N; likewise
constexpr int64_t kChunk = 16;  // row entries kept in registers (one AVX-512 register of floats)

// Elements [offset, offset + d) of the gradient dM_r into `row`: zeros where `grad` is null (no gradient
// reached the kernel's output directly; the update's backward pass may still have a carried one, below).
template <typename T>
inline void load_gradient_row(const T* grad, int64_t offset, int64_t d, T* row) {
    if (grad != nullptr) {
        std::memcpy(row, grad + offset, sizeof(T) * d);
    } else {
        std::memset(row, 0, sizeof(T) * d);
    }
}

template <typename T>
inline T dot(const T* a, const T* b, int64_t d) {
    T total = 0;
#pragma omp simd reduction(+ : total)
    for (int64_t c = 0; c < d; ++c) total += a[c] * b[c];
    return total;
}

// The next step's relational read's share of this step's dM_r, carried into this step's update backward pass
// (the lazy gradient of stm_rl/fastpath/memory_kernels.py) instead of formed into a tensor by the read's own
// backward pass:
//   dM_r[n][a] += alpha * dM_r_next[n][a] + p_next[n] * dmixed_next[a]
// and, while dM_r_next is read, the next step's alpha gradient <dM_r_next, M_r> (M_r: this step's output, the
// next step's M_r_prev). `next` null: nothing carried.
template <typename T>
struct Carried {
    const T* next;                // dM_r of the next step [B, R, d]
    T alpha;
    const T* slot_weights;        // p of the next step [B, N]; null without a relational read
    const T* grad_mixed;          // w (x) d v_r of the next step [B, d, d]; null without a relational read
    const T* memory;              // this step's M_r [B, R, d] for alpha's gradient; null if it is not wanted

    bool any() const { return next != nullptr; }

    // Adds the carried terms to `row` (row r of sample b) and the row's share of alpha's gradient to `alpha_total`.
    void add_to_row(int64_t b, int64_t r, int64_t slots, int64_t d, T* row, double& alpha_total) const {
        if (!any()) return;
        const int64_t offset = (b * slots * d + r) * d;
        const T* carried = next + offset;
        if (memory != nullptr) alpha_total += static_cast<double>(dot(carried, memory + offset, d));
        if (slot_weights != nullptr) {
            const T weight = slot_weights[b * slots + r / d];
            const T* mixed = grad_mixed + (b * d + r % d) * d;
#pragma omp simd
            for (int64_t c = 0; c < d; ++c) row[c] += alpha * carried[c] + weight * mixed[c];
        } else {
#pragma omp simd
            for (int64_t c = 0; c < d; ++c) row[c] += alpha * carried[c];
        }
    }
};

// Outputs of a size that cannot stay in the last-level cache until their next reader (M_r, dM_r and
// dM_r_prev: 38 MB each in fp32 at batch 128) are written with streaming stores: a plain store first reads
// each line it writes into the cache, a quarter more traffic for a pass that reads two such tensors and
// writes one (issue 10). Smaller outputs (batch 1 to 32 here) are written plainly and stay cached for the next
// step. kStreamBytes is about half this class of CPU's last-level cache.
constexpr int64_t kStreamBytes = int64_t(16) << 20;

// `bytes` from `source` (a row in L1) to `destination`, streamed past the caches if `stream` (see above).
// A kernel that streams ends with finish_streaming().
inline void store_row(void* destination, const void* source, int64_t bytes, bool stream) {
#if defined(__AVX512F__)
    char* to = static_cast<char*>(destination);
    if (stream && (reinterpret_cast<uintptr_t>(to) & 63) == 0) {
        const char* from = static_cast<const char*>(source);
        int64_t i = 0;
        for (; i + 64 <= bytes; i += 64) {
            _mm512_stream_si512(reinterpret_cast<__m512i*>(to + i), _mm512_loadu_si512(from + i));
        }
        if (i < bytes) std::memcpy(to + i, from + i, bytes - i);
        return;
    }
#endif
    std::memcpy(destination, source, bytes);
}

// Orders the streaming stores before anything that follows (they are weakly ordered).
inline void finish_streaming() {
#if defined(__AVX512F__)
    _mm_sfence();
#endif
}

// The passes over B x N x d x d tensors do enough arithmetic per row that the hardware prefetchers alone do not
// overlap their reads with it: each stream then adds its full read time (issue 10: update_backward with one more
// stream took 2 ms more). Rows kPrefetchRows ahead are asked for explicitly (16: best of 8 to 32 measured inside
// an agent's rollout step at batch 128; 6 to 12 in isolation, where the data is less far away).
constexpr int64_t kPrefetchRows = 16;
constexpr int64_t kPrefetchFlat = 1024;  // numbers ahead, in the kernels that read their input as one flat run

// Asks for `bytes` bytes from each of `streams` (null ones skipped) ahead of their use, a cache line of each in
// turn (one stream after the other measured slower).
inline void prefetch_lines(int64_t bytes, std::initializer_list<const void*> streams) {
    for (int64_t i = 0; i < bytes; i += 64)
        for (const void* stream : streams)
            if (stream != nullptr) __builtin_prefetch(static_cast<const char*>(stream) + i);
}

// `base + offset`, or null where `base` is null.
template <typename T>
inline const T* at(const T* base, int64_t offset) { return base == nullptr ? nullptr : base + offset; }


// M_r = alpha * M_r_prev + sum_j scores[j] (x) v_j.
template <typename T>
void update_forward(int64_t batch, int64_t slots, int64_t d, const T* memory, int64_t memory_stride, T alpha,
                    const T* scores, const T* values, T* out) {
    const int64_t rows = slots * d;
    const bool stream = batch * rows * d * int64_t(sizeof(T)) >= kStreamBytes;
    T row[kMaxSide];
    for (int64_t b = 0; b < batch; ++b) {
        const T* sample_scores = scores + b * slots * rows;
        const T* sample_values = values + b * slots * d;
        T weights[kMaxSlots];
        for (int64_t r = 0; r < rows; ++r) {
            const T* previous = memory + b * memory_stride + r * d;
            if (r + kPrefetchRows < rows) prefetch_lines(d * int64_t(sizeof(T)), {previous + kPrefetchRows * d});
            for (int64_t j = 0; j < slots; ++j) weights[j] = sample_scores[j * rows + r];
            // Sixteen entries of the row at a time, summed over the N values in a register.
            int64_t c0 = 0;
            for (; c0 + kChunk <= d; c0 += kChunk) {
                T total[kChunk];
#pragma omp simd
                for (int64_t c = 0; c < kChunk; ++c) total[c] = alpha * previous[c0 + c];
                for (int64_t j = 0; j < slots; ++j) {
                    const T weight = weights[j];
                    const T* value = sample_values + j * d + c0;
#pragma omp simd
                    for (int64_t c = 0; c < kChunk; ++c) total[c] += weight * value[c];
                }
#pragma omp simd
                for (int64_t c = 0; c < kChunk; ++c) row[c0 + c] = total[c];
            }
            for (; c0 < d; ++c0) {
                T total = alpha * previous[c0];
                for (int64_t j = 0; j < slots; ++j) total += weights[j] * sample_values[j * d + c0];
                row[c0] = total;
            }
            store_row(out + (b * rows + r) * d, row, int64_t(sizeof(T)) * d, stream);
        }
    }
    if (stream) finish_streaming();
}

// The update's factors' gradients from dM_r:
//   d scores[j][r] = <v_j, dM_r[r]>,  d v_j = sum_r scores[j][r] dM_r[r],
// with dM_r = grad (null: none) + what `carried` brings from the next step; `full` (if not null) receives
// that dM_r (for this step's relational read), and `grad_alpha` (if not null) the carried alpha gradient.
template <typename T>
void update_backward(int64_t batch, int64_t slots, int64_t d, const T* grad, const Carried<T>& carried,
                     const T* scores, const T* values, T* grad_scores, T* grad_values, T* full,
                     double* grad_alpha) {
    const int64_t rows = slots * d;
    const bool stream = batch * rows * d * int64_t(sizeof(T)) >= kStreamBytes;
    double alpha_total = 0;
    T row[kMaxSide];
    for (int64_t b = 0; b < batch; ++b) {
        const T* sample_scores = scores + b * slots * rows;
        const T* sample_values = values + b * slots * d;
        T* sample_grad_values = grad_values == nullptr ? nullptr : grad_values + b * slots * d;
        if (sample_grad_values != nullptr) std::memset(sample_grad_values, 0, sizeof(T) * slots * d);
        for (int64_t r = 0; r < rows; ++r) {
            const int64_t offset = (b * rows + r) * d;
            load_gradient_row(grad, offset, d, row);
            carried.add_to_row(b, r, slots, d, row, alpha_total);
            if (full != nullptr) store_row(full + offset, row, int64_t(sizeof(T)) * d, stream);
            // Four values at a time: four dot products and four accumulations share each load of the row.
            for (int64_t j = 0; j < slots; j += 4) {
                const int64_t count = slots - j < 4 ? slots - j : 4;
                const T* v[4];
                for (int64_t i = 0; i < 4; ++i) v[i] = sample_values + (j + (i < count ? i : count - 1)) * d;  // repeats dropped
                T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
                for (int64_t c = 0; c < d; ++c) {
                    const T g = row[c];
                    s0 += v[0][c] * g;
                    s1 += v[1][c] * g;
                    s2 += v[2][c] * g;
                    s3 += v[3][c] * g;
                }
                if (sample_grad_values != nullptr) {
                    for (int64_t i = 0; i < count; ++i) {
                        T* out = sample_grad_values + (j + i) * d;
                        const T weight = sample_scores[(j + i) * rows + r];
#pragma omp simd
                        for (int64_t c = 0; c < d; ++c) out[c] += weight * row[c];
                    }
                }
                if (grad_scores != nullptr) {
                    const T sums[4] = {s0, s1, s2, s3};
                    for (int64_t i = 0; i < count; ++i) grad_scores[(b * slots + j + i) * rows + r] = sums[i];
                }
            }
        }
    }
    if (stream && full != nullptr) finish_streaming();
    if (grad_alpha != nullptr) *grad_alpha += alpha_total;
}

#if defined(STM_RL_TWINS)
// Helpers of the AVX-512 kernels below.
// Sixteen numbers of dM_r at `offset`: zeros where no gradient reached the output directly (`grad` null).
inline __m512 load_gradient_chunk(const float* grad, int64_t offset) {
    return grad != nullptr ? _mm512_loadu_ps(grad + offset) : _mm512_setzero_ps();
}

// Sixteen sums of sixteen lanes each into one register, by a tree of shuffles and adds (a horizontal sum per
// vector costs about four times the shuffles). Each level halves the lanes given to each vector and pairs the
// vectors up, so that the sixteen row sums of a block leave as one store. The levels in order:
//   fold_halves(a, b):   128-bit quarters [a: 0+2, a: 1+3, b: 0+2, b: 1+3]
//   fold_quarters(A, B): quarters [A's first source, A's second, B's first, B's second], four lanes each
//   fold_pairs(u, w):    quarter k: two lanes of u's source k, two of w's
//   fold_lanes(x, y):    quarter k: [x's source k, x's source k + 4, y's source k, y's source k + 4]
// and unfold_sums puts lane 4k + m (source k + 4m) back at lane k + 4m.
inline __m512 fold_halves(__m512 a, __m512 b) {
    return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
}
inline __m512 fold_quarters(__m512 a, __m512 b) {
    return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xDD));
}
inline __m512 fold_pairs(__m512 u, __m512 w) {
    const __m512d left = _mm512_castps_pd(u), right = _mm512_castps_pd(w);
    return _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(left, right)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(left, right)));
}
inline __m512 fold_lanes(__m512 x, __m512 y) {
    return _mm512_add_ps(_mm512_shuffle_ps(x, y, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_ps(x, y, _MM_SHUFFLE(3, 1, 3, 1)));
}
inline __m512 unfold_sums(__m512 folded) {
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), folded);
}

constexpr int64_t kBlockRows = 16;  // rows of dM_r per block of update_backward_avx512: one register of row sums

// One value v_j's factor gradients over a block of kBlockRows rows of dM_r (`block`, in L1):
//   grad_scores[i] = <v_j, block[i]>   (SCORES)    and    grad_value += sum_i weights[i] block[i]   (VALUES)
// Each load of a row chunk serves both; the row sums are folded as the rows come (fold_* above).
template <int CHUNKS, bool SCORES, bool VALUES>
inline void factor_gradients_block(const float* block, const float* value, const float* weights, float* grad_scores,
                                   float* grad_value) {
    constexpr int d = 16 * CHUNKS;
    __m512 v[CHUNKS], total[CHUNKS];
    for (int k = 0; k < CHUNKS; ++k) {
        if (SCORES) v[k] = _mm512_loadu_ps(value + 16 * k);
        if (VALUES) total[k] = _mm512_loadu_ps(grad_value + 16 * k);
    }
    __m512 quarters[4];
    for (int q = 0; q < 4; ++q) {
        __m512 halves[2];
        for (int h = 0; h < 2; ++h) {
            __m512 sums[2];
            for (int e = 0; e < 2; ++e) {
                const int i = 4 * q + 2 * h + e;
                const float* row = block + i * d;
                const __m512 weight = VALUES ? _mm512_set1_ps(weights[i]) : _mm512_setzero_ps();
                __m512 sum = _mm512_setzero_ps();
                for (int k = 0; k < CHUNKS; ++k) {
                    const __m512 g = _mm512_load_ps(row + 16 * k);
                    if (SCORES) sum = _mm512_fmadd_ps(v[k], g, sum);
                    if (VALUES) total[k] = _mm512_fmadd_ps(weight, g, total[k]);
                }
                sums[e] = sum;
            }
            if (SCORES) halves[h] = fold_halves(sums[0], sums[1]);
        }
        if (SCORES) quarters[q] = fold_quarters(halves[0], halves[1]);
    }
    if (SCORES) {
        const __m512 folded = fold_lanes(fold_pairs(quarters[0], quarters[1]), fold_pairs(quarters[2], quarters[3]));
        _mm512_storeu_ps(grad_scores, unfold_sums(folded));
    }
    if (VALUES)
        for (int k = 0; k < CHUNKS; ++k) _mm512_storeu_ps(grad_value + 16 * k, total[k]);
}

// update_backward for float on AVX-512 with d a multiple of 16 (CHUNKS = d / 16 registers per row), in blocks of
// 16 rows: dM_r is formed two rows at a time into an L1 buffer (and written out), then each value v_j runs over
// the block once, v_j and d v_j held in registers, its 16 row sums folded into one register instead of summed
// one by one (issue 10, measured alternately with the two-row version: 59 -> 48-54 ns per row at batch 128
// with the bf16 carry of the time; 5.7-5.9 -> 4.9-5.1 ms per rollout step inside the agent).
template <int CHUNKS>
void update_backward_avx512(int64_t batch, int64_t slots, const float* grad, const Carried<float>& carried,
                            const float* scores, const float* values, float* grad_scores, float* grad_values,
                            float* full, double* grad_alpha) {
    constexpr int64_t d = 16 * CHUNKS;
    const int64_t rows = slots * d;  // a multiple of kBlockRows
    const bool stream = batch * rows * d * int64_t(sizeof(float)) >= kStreamBytes;
    const bool stream_full = stream && full != nullptr && (reinterpret_cast<uintptr_t>(full) & 63) == 0;
    const bool want_alpha = carried.memory != nullptr;
    const __m512 alpha_next = _mm512_set1_ps(carried.alpha);
    double alpha_total = 0;
    alignas(64) float block[kBlockRows * d];  // this block's rows of dM_r, for the factor gradients
    // The factor gradients wanted, chosen once (null: neither, dM_r alone).
    void (*const factor_gradients)(const float*, const float*, const float*, float*, float*) =
        grad_scores != nullptr && grad_values != nullptr ? &factor_gradients_block<CHUNKS, true, true>
        : grad_scores != nullptr                         ? &factor_gradients_block<CHUNKS, true, false>
        : grad_values != nullptr                         ? &factor_gradients_block<CHUNKS, false, true>
                                                         : nullptr;
    for (int64_t b = 0; b < batch; ++b) {
        const float* sample_scores = scores + b * slots * rows;
        const float* sample_values = values + b * slots * d;
        float* sample_grad_values = grad_values == nullptr ? nullptr : grad_values + b * slots * d;
        if (sample_grad_values != nullptr) std::memset(sample_grad_values, 0, sizeof(float) * slots * d);
        for (int64_t r0 = 0; r0 < rows; r0 += kBlockRows) {
            // dM_r for the block, two rows at a time: the parts given, plus what the next step carries.
            for (int64_t r = r0; r < r0 + kBlockRows; r += 2) {
                const int64_t offset = (b * rows + r) * d;
                if (r + kPrefetchRows < rows) {  // every stream this pass reads, two rows at a time
                    const int64_t ahead = offset + kPrefetchRows * d;
                    prefetch_lines(2 * d * int64_t(sizeof(float)),
                                   {at(grad, ahead), at(carried.next, ahead), at(carried.memory, ahead)});
                }
                __m512 g0[CHUNKS], g1[CHUNKS];
                for (int k = 0; k < CHUNKS; ++k) {
                    g0[k] = load_gradient_chunk(grad, offset + 16 * k);
                    g1[k] = load_gradient_chunk(grad, offset + d + 16 * k);
                }
                if (carried.any()) {  // the next step's read's share (Carried), rows r and r + 1
                    __m512 alpha_sum = _mm512_setzero_ps();
                    for (int k = 0; k < CHUNKS; ++k) {
                        const __m512 n0 = _mm512_loadu_ps(carried.next + offset + 16 * k);
                        const __m512 n1 = _mm512_loadu_ps(carried.next + offset + d + 16 * k);
                        if (want_alpha) {
                            alpha_sum = _mm512_fmadd_ps(n0, _mm512_loadu_ps(carried.memory + offset + 16 * k),
                                                        alpha_sum);
                            alpha_sum = _mm512_fmadd_ps(n1, _mm512_loadu_ps(carried.memory + offset + d + 16 * k),
                                                        alpha_sum);
                        }
                        g0[k] = _mm512_fmadd_ps(alpha_next, n0, g0[k]);
                        g1[k] = _mm512_fmadd_ps(alpha_next, n1, g1[k]);
                    }
                    if (want_alpha) alpha_total += static_cast<double>(_mm512_reduce_add_ps(alpha_sum));
                    if (carried.slot_weights != nullptr) {  // rows r and r + 1 are rows a, a + 1 of slot n
                        const __m512 weight = _mm512_set1_ps(carried.slot_weights[b * slots + r / d]);
                        const float* mixed = carried.grad_mixed + (b * d + r % d) * d;
                        for (int k = 0; k < CHUNKS; ++k) {
                            g0[k] = _mm512_fmadd_ps(weight, _mm512_loadu_ps(mixed + 16 * k), g0[k]);
                            g1[k] = _mm512_fmadd_ps(weight, _mm512_loadu_ps(mixed + d + 16 * k), g1[k]);
                        }
                    }
                }
                float* kept = block + (r - r0) * d;
                for (int k = 0; k < CHUNKS; ++k) {
                    _mm512_store_ps(kept + 16 * k, g0[k]);
                    _mm512_store_ps(kept + d + 16 * k, g1[k]);
                }
                if (full != nullptr) {
                    for (int k = 0; k < CHUNKS; ++k) {
                        if (stream_full) {
                            _mm512_stream_ps(full + offset + 16 * k, g0[k]);
                            _mm512_stream_ps(full + offset + d + 16 * k, g1[k]);
                        } else {
                            _mm512_storeu_ps(full + offset + 16 * k, g0[k]);
                            _mm512_storeu_ps(full + offset + d + 16 * k, g1[k]);
                        }
                    }
                }
            }
            // The factors' gradients over the block, one value at a time.
            for (int64_t j = 0; factor_gradients != nullptr && j < slots; ++j) {
                factor_gradients(block, sample_values + j * d, sample_scores + j * rows + r0,
                                 grad_scores == nullptr ? nullptr : grad_scores + (b * slots + j) * rows + r0,
                                 sample_grad_values == nullptr ? nullptr : sample_grad_values + j * d);
            }
        }
    }
    if (stream_full) finish_streaming();
    if (grad_alpha != nullptr) *grad_alpha += alpha_total;
}

#if !defined(STM_RL_NO_TWIN_UPDATE)
// The AVX-512 version where it applies (float, d = 16..128 in steps of 16); false where it does not.
inline bool update_backward_fast(int64_t batch, int64_t slots, int64_t d, const float* grad,
                                 const Carried<float>& carried, const float* scores, const float* values,
                                 float* grad_scores, float* grad_values, float* full, double* grad_alpha) {
    switch (d) {
#define STM_RL_CASE(CHUNKS)                                                                                     \
    case 16 * CHUNKS:                                                                                          \
        update_backward_avx512<CHUNKS>(batch, slots, grad, carried, scores, values, grad_scores, grad_values,    \
                                       full, grad_alpha);                                                       \
        return true;
        STM_RL_CASE(1) STM_RL_CASE(2) STM_RL_CASE(3) STM_RL_CASE(4)
        STM_RL_CASE(5) STM_RL_CASE(6) STM_RL_CASE(7) STM_RL_CASE(8)
#undef STM_RL_CASE
        default:
            return false;
    }
}
#endif  // STM_RL_NO_TWIN_UPDATE
#endif

template <typename T>
inline bool update_backward_fast(int64_t, int64_t, int64_t, const T*, const Carried<T>&, const T*, const T*, T*,
                                 T*, T*, double*) {
    return false;
}

// The relational read's forward pass (paper eq. 11) in one pass over M_r_prev: the slot mix
//   mixed = sum_n p_n M_r_prev[n]     and the per-slot reads     reads[n] = w^T M_r_prev[n]
// (v_r = sum_n p_n reads[n]). The per-slot reads give p's gradient, d p_n = <reads[n], d v_r>, so that the
// backward pass need not read M_r_prev for it.
template <typename T>
void read_forward(int64_t batch, int64_t slots, int64_t d, const T* memory, int64_t memory_stride,
                  const T* slot_weights, const T* key, T* mixed, T* reads) {
    for (int64_t b = 0; b < batch; ++b) {
        T* mix = mixed + b * d * d;
        for (int64_t n = 0; n < slots; ++n) {
            const T weight = slot_weights[b * slots + n];
            T* read = reads + (b * slots + n) * d;
            std::memset(read, 0, sizeof(T) * d);
            for (int64_t e = 0; e < d; ++e) {
                const T* row = memory + b * memory_stride + (n * d + e) * d;
                if (n * d + e + kPrefetchRows < slots * d) prefetch_lines(d * int64_t(sizeof(T)), {row + kPrefetchRows * d});
                const T k = key[b * d + e];
                T* mix_row = mix + e * d;
                if (n == 0) {
#pragma omp simd
                    for (int64_t c = 0; c < d; ++c) {
                        mix_row[c] = weight * row[c];
                        read[c] += k * row[c];
                    }
                } else {
#pragma omp simd
                    for (int64_t c = 0; c < d; ++c) {
                        mix_row[c] += weight * row[c];
                        read[c] += k * row[c];
                    }
                }
            }
        }
    }
}

// Everything that needs M_r_prev and dM_r together, in one pass over both:
//   d M_r_prev[n] = alpha * dM_r[n] + p_n dmixed   (the update's and the read's gradients, summed)
//   d p_n         = <M_r_prev[n], dmixed>
//   d alpha       = <dM_r, M_r_prev>                (accumulated into *grad_alpha, in double)
// Without slot_weights and grad_mixed (no relational read) the read's terms are left out; without grad (a read
// whose memory no update consumed) dM_r is zero.
template <typename T>
void memory_backward(int64_t batch, int64_t slots, int64_t d, const T* grad, const T* memory,
                     int64_t memory_stride, T alpha, const T* slot_weights, const T* grad_mixed, T* grad_memory,
                     T* grad_slot_weights, double* grad_alpha) {
    const int64_t rows = slots * d;
    const bool has_grad = grad != nullptr;
    const bool stream = batch * rows * d * int64_t(sizeof(T)) >= kStreamBytes;
    T row[kMaxSide];
    T result[kMaxSide];
    double alpha_total = 0;
    for (int64_t b = 0; b < batch; ++b) {
        for (int64_t n = 0; n < slots; ++n) {
            const T weight = slot_weights == nullptr ? T(0) : slot_weights[b * slots + n];
            T slot_total = 0;
            for (int64_t a = 0; a < d; ++a) {
                const int64_t r = n * d + a;
                const int64_t offset = (b * rows + r) * d;
                const T* previous = memory + b * memory_stride + r * d;
                if (r + kPrefetchRows < rows) {
                    const int64_t ahead = offset + kPrefetchRows * d;
                    prefetch_lines(d * int64_t(sizeof(T)), {previous + kPrefetchRows * d, at(grad, ahead)});
                }
                const T* mixed = grad_mixed == nullptr ? nullptr : grad_mixed + b * d * d + a * d;
                T* target = grad_memory == nullptr ? nullptr : grad_memory + offset;  // written from result
                if (mixed != nullptr) slot_total += dot(previous, mixed, d);
                if (has_grad) {
                    load_gradient_row(grad, offset, d, row);
                    if (grad_alpha != nullptr) alpha_total += static_cast<double>(dot(row, previous, d));
                } else {
                    std::memset(row, 0, sizeof(T) * d);
                }
                if (target != nullptr && mixed != nullptr) {
#pragma omp simd
                    for (int64_t c = 0; c < d; ++c) result[c] = alpha * row[c] + weight * mixed[c];
                } else if (target != nullptr) {
#pragma omp simd
                    for (int64_t c = 0; c < d; ++c) result[c] = alpha * row[c];
                }
                if (target != nullptr) store_row(target, result, int64_t(sizeof(T)) * d, stream);
            }
            if (grad_slot_weights != nullptr) grad_slot_weights[b * slots + n] = slot_total;
        }
    }
    if (stream) finish_streaming();
    if (grad_alpha != nullptr) *grad_alpha += alpha_total;
}

// ---------------------------------------------------------------------------------------------------------
// The gated write into the item memory (paper eq. 10 with the gates of Appendix D, spec STM.md section 3
// steps 2-4), everything but the gates' matrix product, which BLAS computes in between (tanh_forward before
// it; tanh_backward_add after its backward product):
//   pre    [B, d, 2d]  tanh(M_i_prev) W_gate^T (row i: the gates of row i of the memory)
//   offset [B, 2d]     the gates' input half and biases, the same for every row
//   M'[i][j] = sigmoid(pre[i][j] + offset[j]) tanh(u_i u_j) + sigmoid(pre[i][d+j] + offset[d+j]) M_i_prev[i][j]
// In PyTorch operations this is about ten passes over [B, d, d] and [B, d, 2d] tensors forward and twenty
// backward; here one each, with the sigmoids and tanh recomputed in the backward pass instead of saved.

template <typename T>
inline T sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }

// tanh as 2 sigmoid(2x) - 1, as stm_rl/memory/activations.py computes it in fp32.
template <typename T>
inline T tanh_by_sigmoid(T x) { return T(2) * sigmoid(T(2) * x) - T(1); }

template <typename T>
void gated_write_forward(int64_t batch, int64_t d, const T* previous, int64_t previous_stride, const T* u,
                         const T* pre, const T* offset, T* out) {
    for (int64_t b = 0; b < batch; ++b) {
        const T* item = u + b * d;
        const T* gate_offset = offset + b * 2 * d;
        for (int64_t i = 0; i < d; ++i) {
            const T* old = previous + b * previous_stride + i * d;
            const T* gates = pre + (b * d + i) * 2 * d;
            T* row = out + (b * d + i) * d;
            const T ui = item[i];
            for (int64_t j = 0; j < d; ++j) {
                const T input_gate = sigmoid(gates[j] + gate_offset[j]);
                const T forget_gate = sigmoid(gates[d + j] + gate_offset[d + j]);
                row[j] = input_gate * tanh_by_sigmoid(ui * item[j]) + forget_gate * old[j];
            }
        }
    }
}

// Gradients of the gated write from dM' (`grad`, [B, d, d]); any output may be null (not wanted):
//   grad_previous [B, d, d]  dM' * forget gate (the direct path; tanh(M_i_prev)'s is added by autograd)
//   grad_u        [B, d]     through tanh(u_i u_j)
//   grad_pre      [B, d, 2d] the gates' pre-activations
//   grad_offset   [B, 2d]    the same summed over rows
template <typename T>
void gated_write_backward(int64_t batch, int64_t d, const T* grad, const T* previous, int64_t previous_stride,
                          const T* u, const T* pre, const T* offset, T* grad_previous, T* grad_u, T* grad_pre,
                          T* grad_offset) {
    T column[kMaxSide], offset_total[2 * kMaxSide];
    for (int64_t b = 0; b < batch; ++b) {
        const T* item = u + b * d;
        const T* gate_offset = offset + b * 2 * d;
        std::memset(column, 0, sizeof(T) * d);
        std::memset(offset_total, 0, sizeof(T) * 2 * d);
        for (int64_t i = 0; i < d; ++i) {
            const T* old = previous + b * previous_stride + i * d;
            const T* gates = pre + (b * d + i) * 2 * d;
            const T* g = grad + (b * d + i) * d;
            const T ui = item[i];
            T row_total = 0;
            for (int64_t j = 0; j < d; ++j) {
                const T input_gate = sigmoid(gates[j] + gate_offset[j]);
                const T forget_gate = sigmoid(gates[d + j] + gate_offset[d + j]);
                const T written = tanh_by_sigmoid(ui * item[j]);
                const T d_input = g[j] * written * input_gate * (T(1) - input_gate);
                const T d_forget = g[j] * old[j] * forget_gate * (T(1) - forget_gate);
                const T d_product = g[j] * input_gate * (T(1) - written * written);  // d (u_i u_j)
                offset_total[j] += d_input;
                offset_total[d + j] += d_forget;
                row_total += d_product * item[j];
                column[j] += d_product * ui;
                if (grad_pre != nullptr) {
                    grad_pre[(b * d + i) * 2 * d + j] = d_input;
                    grad_pre[(b * d + i) * 2 * d + d + j] = d_forget;
                }
                if (grad_previous != nullptr) grad_previous[(b * d + i) * d + j] = g[j] * forget_gate;
            }
            if (grad_u != nullptr) grad_u[b * d + i] = row_total;
        }
        if (grad_u != nullptr)
            for (int64_t j = 0; j < d; ++j) grad_u[b * d + j] += column[j];
        if (grad_offset != nullptr) std::memcpy(grad_offset + b * 2 * d, offset_total, sizeof(T) * 2 * d);
    }
}

// T = tanh(M_i_prev) for the gates' product (sample stride `stride`: 0 when expanded over the batch).
template <typename T>
void tanh_forward(int64_t batch, int64_t size, const T* x, int64_t stride, T* out) {
    for (int64_t b = 0; b < batch; ++b)
        for (int64_t i = 0; i < size; ++i) out[b * size + i] = tanh_by_sigmoid(x[b * stride + i]);
}

// grad += upstream * (1 - y^2): tanh's backward pass added to a gradient that already holds another path's.
template <typename T>
void tanh_backward_add(int64_t count, T* grad, const T* upstream, const T* y) {
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) grad[i] += upstream[i] * (T(1) - y[i] * y[i]);
}

// ---------------------------------------------------------------------------------------------------------
// The scores of SAM's outer-product attention (paper eq. 2 with F = tanh; spec STM.md section 2), key-major:
//   scores[j][n][a] = tanh(k_j[a] q_n[a])        ([B, N(key), N(query), d])
// and their backward pass from the gradients of the scores' two readers (the relational update and the
// transfer to item memory), summed here rather than by autograd into a new tensor:
//   pre = (g + g_other) (1 - scores^2),  d q_n[a] = sum_j pre[j][n][a] k_j[a],  d k_j[a] = sum_n pre[j][n][a] q_n[a]

// One row of scores, tanh(key (.) query); the AVX-512 overload for float is defined below.
template <typename T>
inline void tanh_product_row(const T* key, const T* query, int64_t d, T* row) {
    for (int64_t a = 0; a < d; ++a) row[a] = tanh_by_sigmoid(key[a] * query[a]);
}
#if defined(STM_RL_TWINS) && !defined(STM_RL_NO_TWIN_TANH)
inline void tanh_product_row(const float* key, const float* query, int64_t d, float* row);  // below, vectorised
#endif

template <typename T>
void scores_forward(int64_t batch, int64_t slots, int64_t d, const T* q, const T* k, T* out) {
    for (int64_t b = 0; b < batch; ++b)
        for (int64_t j = 0; j < slots; ++j)
            for (int64_t n = 0; n < slots; ++n)
                tanh_product_row(k + (b * slots + j) * d, q + (b * slots + n) * d, d,
                                 out + ((b * slots + j) * slots + n) * d);
}

template <typename T>
void scores_backward(int64_t batch, int64_t slots, int64_t d, const T* grad, const T* grad_other, const T* scores,
                     const T* q, const T* k, T* grad_q, T* grad_k) {
    T pre[kMaxSide];
    std::memset(grad_q, 0, sizeof(T) * batch * slots * d);
    std::memset(grad_k, 0, sizeof(T) * batch * slots * d);
    for (int64_t b = 0; b < batch; ++b)
        for (int64_t j = 0; j < slots; ++j) {
            const T* key = k + (b * slots + j) * d;
            T* key_grad = grad_k + (b * slots + j) * d;
            for (int64_t n = 0; n < slots; ++n) {
                const int64_t offset = ((b * slots + j) * slots + n) * d;
                const T* query = q + (b * slots + n) * d;
                T* query_grad = grad_q + (b * slots + n) * d;
                const T* score = scores + offset;
#pragma omp simd
                for (int64_t a = 0; a < d; ++a) pre[a] = T(1) - score[a] * score[a];
                if (grad != nullptr && grad_other != nullptr) {
#pragma omp simd
                    for (int64_t a = 0; a < d; ++a) pre[a] *= grad[offset + a] + grad_other[offset + a];
                } else {
                    const T* only = grad != nullptr ? grad + offset : grad_other + offset;
#pragma omp simd
                    for (int64_t a = 0; a < d; ++a) pre[a] *= only[a];
                }
#pragma omp simd
                for (int64_t a = 0; a < d; ++a) {
                    query_grad[a] += pre[a] * key[a];
                    key_grad[a] += pre[a] * query[a];
                }
            }
        }
}

// ---------------------------------------------------------------------------------------------------------
// ELU (alpha = 1) of the small frame encoder (agents/elu.py), elementwise over `count` numbers of a dense
// tensor, in float, double or bf16 (uint16_t, computed in float):
//   y = x > 0 ? x : exp(x) - 1,    backward: dx = x > 0 ? dy : dy exp(x)   (from the saved input x)
// PyTorch's CPU ELU evaluates expm1 with a slow high-accuracy routine (about 1 ns per number here, the
// encoder's largest elementwise cost, issue 10); the AVX-512 version below takes a few cycles per sixteen.

template <typename T>
inline T load_number(const T* data, int64_t i) { return data[i]; }
inline float load_number(const uint16_t* data, int64_t i) { return bf16_to_float(data[i]); }
template <typename T>
inline void store_number(T* data, int64_t i, T value) { data[i] = value; }
inline void store_number(uint16_t* data, int64_t i, float value) { data[i] = float_to_bf16(value); }

template <typename S>
void elu_forward(int64_t count, const S* x, S* y) {
    for (int64_t i = 0; i < count; ++i) {
        const auto v = load_number(x, i);
        store_number(y, i, v > 0 ? v : std::expm1(v));
    }
}

template <typename S>
void elu_backward(int64_t count, const S* grad, const S* x, S* grad_x) {
    for (int64_t i = 0; i < count; ++i) {
        const auto v = load_number(x, i);
        const auto g = load_number(grad, i);
        store_number(grad_x, i, v > 0 ? g : g * std::exp(v));
    }
}

#if defined(STM_RL_TWINS)
// The range reduction of the exps below: x = n ln2 + r with |r| <= ln2 / 2 (ln2 in two parts, Cody-Waite), and
// the inner part of exp(r)'s Taylor polynomial of degree 7, inner = 1/2 + r/6 + ... + r^5/5040, so that
// exp(r) = 1 + r + r^2 inner (error below 1e-8 relative).
struct ExpReduction {
    __m512 n, r, inner;
};

inline ExpReduction reduce_exp(__m512 x) {
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    return {n, r, p};
}

// exp of 16 floats, 2^n exp(r) (reduce_exp); saturates to 0 and infinity like expf.
inline __m512 exp_avx512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(89.0f));
    const ExpReduction e = reduce_exp(x);
    __m512 p = _mm512_fmadd_ps(e.inner, e.r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, e.r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, e.n);
}

inline __m512 sigmoid_avx512(__m512 x) {
    const __m512 one = _mm512_set1_ps(1.0f);
    return _mm512_div_ps(one, _mm512_add_ps(one, exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

inline __m512 tanh_avx512(__m512 x) {
    const __m512 two = _mm512_set1_ps(2.0f);
    return _mm512_fmsub_ps(two, sigmoid_avx512(_mm512_mul_ps(two, x)), _mm512_set1_ps(1.0f));
}

// The mask of the 16-float chunk at column j of a d-wide row (all set but at the tail).
inline __mmask16 chunk_mask(int64_t j, int64_t d) {
    return d - j >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (d - j)) - 1u);
}

void gated_write_forward_avx512(int64_t batch, int64_t d, const float* previous, int64_t previous_stride,
                                const float* u, const float* pre, const float* offset, float* out) {
    for (int64_t b = 0; b < batch; ++b) {
        const float* item = u + b * d;
        const float* gate_offset = offset + b * 2 * d;
        for (int64_t i = 0; i < d; ++i) {
            const float* old = previous + b * previous_stride + i * d;
            const float* gates = pre + (b * d + i) * 2 * d;
            float* row = out + (b * d + i) * d;
            const __m512 ui = _mm512_set1_ps(item[i]);
            prefetch_lines(d * int64_t(sizeof(float)), {old + kPrefetchRows * d, gates + kPrefetchRows * 2 * d,
                                                         gates + kPrefetchRows * 2 * d + d});
            for (int64_t j = 0; j < d; j += 16) {
                const __mmask16 m = chunk_mask(j, d);
                const __m512 input_gate = sigmoid_avx512(
                    _mm512_add_ps(_mm512_maskz_loadu_ps(m, gates + j), _mm512_maskz_loadu_ps(m, gate_offset + j)));
                const __m512 forget_gate = sigmoid_avx512(_mm512_add_ps(
                    _mm512_maskz_loadu_ps(m, gates + d + j), _mm512_maskz_loadu_ps(m, gate_offset + d + j)));
                const __m512 written = tanh_avx512(_mm512_mul_ps(ui, _mm512_maskz_loadu_ps(m, item + j)));
                _mm512_mask_storeu_ps(row + j, m, _mm512_fmadd_ps(input_gate, written,
                                                                  _mm512_mul_ps(forget_gate, _mm512_maskz_loadu_ps(m, old + j))));
            }
        }
    }
}

void gated_write_backward_avx512(int64_t batch, int64_t d, const float* grad, const float* previous,
                                 int64_t previous_stride, const float* u, const float* pre, const float* offset,
                                 float* grad_previous, float* grad_u, float* grad_pre, float* grad_offset) {
    alignas(64) float column[kMaxSide + 16], offset_total[2 * kMaxSide + 16];
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t b = 0; b < batch; ++b) {
        const float* item = u + b * d;
        const float* gate_offset = offset + b * 2 * d;
        std::memset(column, 0, sizeof(float) * d);
        std::memset(offset_total, 0, sizeof(float) * 2 * d);
        for (int64_t i = 0; i < d; ++i) {
            const float* old = previous + b * previous_stride + i * d;
            const float* gates = pre + (b * d + i) * 2 * d;
            const float* g_row = grad + (b * d + i) * d;
            prefetch_lines(d * int64_t(sizeof(float)), {old + kPrefetchRows * d, gates + kPrefetchRows * 2 * d,
                                                         gates + kPrefetchRows * 2 * d + d, g_row + kPrefetchRows * d});
            const __m512 ui = _mm512_set1_ps(item[i]);
            __m512 row_total = _mm512_setzero_ps();
            for (int64_t j = 0; j < d; j += 16) {
                const __mmask16 m = chunk_mask(j, d);
                const __m512 g = _mm512_maskz_loadu_ps(m, g_row + j);
                const __m512 uj = _mm512_maskz_loadu_ps(m, item + j);
                const __m512 input_gate = sigmoid_avx512(
                    _mm512_add_ps(_mm512_maskz_loadu_ps(m, gates + j), _mm512_maskz_loadu_ps(m, gate_offset + j)));
                const __m512 forget_gate = sigmoid_avx512(_mm512_add_ps(
                    _mm512_maskz_loadu_ps(m, gates + d + j), _mm512_maskz_loadu_ps(m, gate_offset + d + j)));
                const __m512 written = tanh_avx512(_mm512_mul_ps(ui, uj));
                const __m512 g_input = _mm512_mul_ps(g, input_gate);
                const __m512 d_input = _mm512_mul_ps(_mm512_mul_ps(g_input, written), _mm512_sub_ps(one, input_gate));
                const __m512 d_forget = _mm512_mul_ps(
                    _mm512_mul_ps(_mm512_mul_ps(g, _mm512_maskz_loadu_ps(m, old + j)), forget_gate),
                    _mm512_sub_ps(one, forget_gate));
                const __m512 d_product = _mm512_mul_ps(g_input, _mm512_fnmadd_ps(written, written, one));
                _mm512_mask_storeu_ps(offset_total + j, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, offset_total + j), d_input));
                _mm512_mask_storeu_ps(offset_total + d + j, m,
                                      _mm512_add_ps(_mm512_maskz_loadu_ps(m, offset_total + d + j), d_forget));
                row_total = _mm512_fmadd_ps(d_product, uj, row_total);
                _mm512_mask_storeu_ps(column + j, m, _mm512_fmadd_ps(d_product, ui, _mm512_maskz_loadu_ps(m, column + j)));
                if (grad_pre != nullptr) {
                    _mm512_mask_storeu_ps(grad_pre + (b * d + i) * 2 * d + j, m, d_input);
                    _mm512_mask_storeu_ps(grad_pre + (b * d + i) * 2 * d + d + j, m, d_forget);
                }
                if (grad_previous != nullptr)
                    _mm512_mask_storeu_ps(grad_previous + (b * d + i) * d + j, m, _mm512_mul_ps(g, forget_gate));
            }
            if (grad_u != nullptr) grad_u[b * d + i] = _mm512_reduce_add_ps(row_total);
        }
        if (grad_u != nullptr)
            for (int64_t j = 0; j < d; ++j) grad_u[b * d + j] += column[j];
        if (grad_offset != nullptr) std::memcpy(grad_offset + b * 2 * d, offset_total, sizeof(float) * 2 * d);
    }
}

void tanh_forward_avx512(int64_t batch, int64_t size, const float* x, int64_t stride, float* out) {
    for (int64_t b = 0; b < batch; ++b)
        for (int64_t i = 0; i < size; i += 16) {
            const __mmask16 m = chunk_mask(i, size);
            __builtin_prefetch(x + b * stride + i + kPrefetchFlat);
            _mm512_mask_storeu_ps(out + b * size + i, m, tanh_avx512(_mm512_maskz_loadu_ps(m, x + b * stride + i)));
        }
}

#if !defined(STM_RL_NO_TWIN_TANH)
inline void tanh_product_row(const float* key, const float* query, int64_t d, float* row) {
    for (int64_t a = 0; a < d; a += 16) {
        const __mmask16 m = chunk_mask(a, d);
        _mm512_mask_storeu_ps(row + a, m, tanh_avx512(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, key + a),
                                                                    _mm512_maskz_loadu_ps(m, query + a))));
    }
}
#endif

// exp(x) - 1 and exp(x) of 16 floats for x <= 0 (ELU's negative side), sharing one reduction: with
// x = n ln2 + r, exp(x) = 2^n (1 + q(r)); expm1 is formed as 2^n q + (2^n - 1), exact in the leading term
// near 0 where exp(x) - 1 would cancel.
inline void expm1_and_exp_avx512(__m512 x, __m512* expm1_out, __m512* exp_out) {
    const ExpReduction e = reduce_exp(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)));
    const __m512 q = _mm512_fmadd_ps(_mm512_mul_ps(e.r, e.r), e.inner, e.r);  // exp(r) - 1
    const __m512 scale = _mm512_scalef_ps(_mm512_set1_ps(1.0f), e.n);
    if (expm1_out != nullptr) *expm1_out = _mm512_fmadd_ps(scale, q, _mm512_sub_ps(scale, _mm512_set1_ps(1.0f)));
    if (exp_out != nullptr) *exp_out = _mm512_fmadd_ps(scale, q, scale);
}

inline __m512 load16(const float* data, __mmask16 m) { return _mm512_maskz_loadu_ps(m, data); }
inline __m512 load16(const uint16_t* data, __mmask16 m) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, data)), 16));
}
inline void store16(float* data, __mmask16 m, __m512 value) { _mm512_mask_storeu_ps(data, m, value); }
#if defined(__AVX512BF16__)
inline void store16(uint16_t* data, __mmask16 m, __m512 value) {
    _mm256_mask_storeu_epi16(data, m, reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(value)));
}
#endif

template <typename S>
void elu_forward_avx512(int64_t count, const S* x, S* y) {
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t i = 0; i < count; i += 16) {
        const __mmask16 m = chunk_mask(i, count);
        __builtin_prefetch(x + i + kPrefetchFlat);
        const __m512 v = load16(x + i, m);
        __m512 negative;
        expm1_and_exp_avx512(_mm512_min_ps(v, zero), &negative, nullptr);
        const __m512 out = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, zero, _CMP_GT_OQ), negative, v);
        store16(y + i, m, _mm512_mask_mov_ps(out, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), v));  // NaN stays NaN
    }
}

template <typename S>
void elu_backward_avx512(int64_t count, const S* grad, const S* x, S* grad_x) {
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t i = 0; i < count; i += 16) {
        const __mmask16 m = chunk_mask(i, count);
        prefetch_lines(64, {x + i + kPrefetchFlat, grad + i + kPrefetchFlat});
        const __m512 v = load16(x + i, m), g = load16(grad + i, m);
        __m512 slope;
        expm1_and_exp_avx512(_mm512_min_ps(v, zero), nullptr, &slope);
        store16(grad_x + i, m, _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, zero, _CMP_GT_OQ), _mm512_mul_ps(g, slope), g));
    }
}

// The vectorised ELU serves float, and bf16 where the CPU converts to it (store16 above).
template <typename S>
constexpr bool kVectorisedElu = std::is_same_v<S, float>
#if defined(__AVX512BF16__)
                                || std::is_same_v<S, uint16_t>
#endif
    ;
#if !defined(STM_RL_NO_TWIN_ELU)
#define STM_RL_HAS_VECTORISED_ELU 1
#endif

#if !defined(STM_RL_NO_TWIN_TANH)
inline bool tanh_forward_fast(int64_t batch, int64_t size, const float* x, int64_t stride, float* out) {
    tanh_forward_avx512(batch, size, x, stride, out);
    return true;
}
#endif

#if !defined(STM_RL_NO_TWIN_GATED_WRITE)
inline bool gated_write_forward_fast(int64_t batch, int64_t d, const float* previous, int64_t previous_stride,
                                     const float* u, const float* pre, const float* offset, float* out) {
    gated_write_forward_avx512(batch, d, previous, previous_stride, u, pre, offset, out);
    return true;
}

inline bool gated_write_backward_fast(int64_t batch, int64_t d, const float* grad, const float* previous,
                                      int64_t previous_stride, const float* u, const float* pre, const float* offset,
                                      float* grad_previous, float* grad_u, float* grad_pre, float* grad_offset) {
    gated_write_backward_avx512(batch, d, grad, previous, previous_stride, u, pre, offset, grad_previous, grad_u,
                                grad_pre, grad_offset);
    return true;
}
#endif  // STM_RL_NO_TWIN_GATED_WRITE
#endif

template <typename T>
inline bool tanh_forward_fast(int64_t, int64_t, const T*, int64_t, T*) {
    return false;
}

// The vectorised ELU where it serves S (kVectorisedElu); false where the portable loops must run.
template <typename S>
inline bool elu_forward_fast(int64_t count, const S* x, S* y) {
#if defined(STM_RL_HAS_VECTORISED_ELU)
    if constexpr (kVectorisedElu<S>) {
        elu_forward_avx512(count, x, y);
        return true;
    }
#endif
    return false;
}

template <typename S>
inline bool elu_backward_fast(int64_t count, const S* grad, const S* x, S* grad_x) {
#if defined(STM_RL_HAS_VECTORISED_ELU)
    if constexpr (kVectorisedElu<S>) {
        elu_backward_avx512(count, grad, x, grad_x);
        return true;
    }
#endif
    return false;
}

template <typename T>
inline bool gated_write_forward_fast(int64_t, int64_t, const T*, int64_t, const T*, const T*, const T*, T*) {
    return false;
}

template <typename T>
inline bool gated_write_backward_fast(int64_t, int64_t, const T*, const T*, int64_t, const T*, const T*, const T*,
                                      T*, T*, T*, T*) {
    return false;
}

}  // namespace

// The gradient dM_r comes as one pointer, null where no gradient reached the output directly.
#define STM_RL_INSTANCES(T, SUFFIX)                                                                          \
    extern "C" void stm_update_forward_##SUFFIX(int64_t batch, int64_t slots, int64_t d, const T* memory,     \
                                                int64_t memory_stride, double alpha, const T* scores,        \
                                                const T* values, T* out) {                                   \
        update_forward<T>(batch, slots, d, memory, memory_stride, static_cast<T>(alpha), scores, values, out); \
    }                                                                                                        \
    extern "C" void stm_update_backward_##SUFFIX(                                                          \
        int64_t batch, int64_t slots, int64_t d, const T* grad, const T* next, double alpha_next,            \
        const T* slot_weights_next, const T* grad_mixed_next, const T* memory, const T* scores,              \
        const T* values, T* grad_scores, T* grad_values, T* full, double* grad_alpha_next) {                 \
        const Carried<T> carried{next, static_cast<T>(alpha_next), slot_weights_next, grad_mixed_next, memory}; \
        if (!update_backward_fast(batch, slots, d, grad, carried, scores, values, grad_scores, grad_values,   \
                                  full, grad_alpha_next))                                                    \
            update_backward<T>(batch, slots, d, grad, carried, scores, values, grad_scores, grad_values, full, \
                               grad_alpha_next);                                                             \
    }                                                                                                        \
    extern "C" void stm_read_forward_##SUFFIX(int64_t batch, int64_t slots, int64_t d, const T* memory,       \
                                              int64_t memory_stride, const T* slot_weights, const T* key,    \
                                              T* mixed, T* reads) {                                          \
        read_forward<T>(batch, slots, d, memory, memory_stride, slot_weights, key, mixed, reads);             \
    }                                                                                                        \
    extern "C" void stm_memory_backward_##SUFFIX(int64_t batch, int64_t slots, int64_t d, const T* grad,     \
                                                 const T* memory, int64_t memory_stride, double alpha,       \
                                                 const T* slot_weights, const T* grad_mixed, T* grad_memory, \
                                                 T* grad_slot_weights, double* grad_alpha) {                 \
        memory_backward<T>(batch, slots, d, grad, memory, memory_stride, static_cast<T>(alpha), slot_weights, \
                           grad_mixed, grad_memory, grad_slot_weights, grad_alpha);                          \
    }                                                                                                        \
    extern "C" void stm_gated_write_forward_##SUFFIX(int64_t batch, int64_t d, const T* previous,            \
                                                     int64_t previous_stride, const T* u, const T* pre,      \
                                                     const T* offset, T* out) {                              \
        if (!gated_write_forward_fast(batch, d, previous, previous_stride, u, pre, offset, out))             \
            gated_write_forward<T>(batch, d, previous, previous_stride, u, pre, offset, out);                \
    }                                                                                                        \
    extern "C" void stm_gated_write_backward_##SUFFIX(int64_t batch, int64_t d, const T* grad,               \
                                                      const T* previous, int64_t previous_stride, const T* u, \
                                                      const T* pre, const T* offset, T* grad_previous,       \
                                                      T* grad_u, T* grad_pre, T* grad_offset) {              \
        if (!gated_write_backward_fast(batch, d, grad, previous, previous_stride, u, pre, offset,            \
                                       grad_previous, grad_u, grad_pre, grad_offset))                        \
            gated_write_backward<T>(batch, d, grad, previous, previous_stride, u, pre, offset, grad_previous, \
                                    grad_u, grad_pre, grad_offset);                                          \
    }                                                                                                        \
    extern "C" void stm_tanh_forward_##SUFFIX(int64_t batch, int64_t size, const T* x, int64_t stride, T* out) { \
        if (!tanh_forward_fast(batch, size, x, stride, out)) tanh_forward<T>(batch, size, x, stride, out);     \
    }                                                                                                        \
    extern "C" void stm_tanh_backward_add_##SUFFIX(int64_t count, T* grad, const T* upstream, const T* y) {    \
        tanh_backward_add<T>(count, grad, upstream, y);                                                      \
    }                                                                                                        \
    extern "C" void stm_scores_forward_##SUFFIX(int64_t batch, int64_t slots, int64_t d, const T* q, const T* k, \
                                                T* out) {                                                    \
        scores_forward<T>(batch, slots, d, q, k, out);                                                       \
    }                                                                                                        \
    extern "C" void stm_scores_backward_##SUFFIX(int64_t batch, int64_t slots, int64_t d, const T* grad,      \
                                                 const T* grad_other, const T* scores, const T* q, const T* k, \
                                                 T* grad_q, T* grad_k) {                                     \
        scores_backward<T>(batch, slots, d, grad, grad_other, scores, q, k, grad_q, grad_k);                 \
    }

STM_RL_INSTANCES(float, f32)
STM_RL_INSTANCES(double, f64)

// ELU in float, double and bf16 (uint16_t).
#define STM_RL_ELU(S, SUFFIX)                                                                                 \
    extern "C" void stm_elu_forward_##SUFFIX(int64_t count, const S* x, S* y) {                              \
        if (!elu_forward_fast(count, x, y)) elu_forward<S>(count, x, y);                                     \
    }                                                                                                        \
    extern "C" void stm_elu_backward_##SUFFIX(int64_t count, const S* grad, const S* x, S* grad_x) {          \
        if (!elu_backward_fast(count, grad, x, grad_x)) elu_backward<S>(count, grad, x, grad_x);              \
    }

STM_RL_ELU(float, f32)
STM_RL_ELU(double, f64)
STM_RL_ELU(uint16_t, bf16)

extern "C" int stm_abi_version() { return 10; }

// Which vectorised paths this build took, one bit each (VECTORISED_PATHS in kernels.py): each
// dispatcher is asked with an empty input and answers whether it would run its vectorised version. The
// portable loops compute the same values, so without this a lost fast path would go unnoticed by tests.
extern "C" int64_t stm_vectorised_paths() {
    const Carried<float> no_carried{nullptr, 0.0f, nullptr, nullptr, nullptr};
    const float* none = nullptr;
    float* out = nullptr;
    const uint16_t* none_bf16 = nullptr;  // the bf16 ELU's
    uint16_t* out_bf16 = nullptr;
    const bool answers[] = {
        update_backward_fast(0, 1, 96, none, no_carried, none, none, out, out, out, nullptr),
        gated_write_forward_fast(0, 96, none, 0, none, none, none, out),
        gated_write_backward_fast(0, 96, none, none, 0, none, none, none, out, out, out, out),
        tanh_forward_fast(0, 0, none, 0, out),
        elu_forward_fast(0, none, out),
        elu_backward_fast(0, none, none, out),
        elu_forward_fast(0, none_bf16, out_bf16),
        elu_backward_fast(0, none_bf16, none_bf16, out_bf16),
    };
    int64_t bits = 0;
    for (size_t i = 0; i < sizeof(answers) / sizeof(answers[0]); ++i) bits |= int64_t(answers[i]) << i;
    return bits;
}
