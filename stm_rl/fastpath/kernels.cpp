// Fused CPU kernels for the STM's relational memory, the gated write into its item memory and SAM's scores
// (issue 10), loaded by stm_rl/fastpath/kernels.py.
//
// Each kernel makes one pass over the B x N x d x d tensors it touches, where the PyTorch
// composition of the same step makes several (a scaling, a batched product, a sum of two
// gradients, ...): on CPUs the step is bound by that memory traffic. The memory is seen as
// B samples of R = N*d rows of d numbers; every row is processed while it sits in L1, and the
// small operands (scores, values, the mixed read gradient) are reused across rows.
//
// Plain C interfaces over raw pointers (called through ctypes), single-threaded, one instance for
// float and one for double (the gradient checks). The relational memory and its gradients are in
// that one type throughout (under bf16 autocast too: since issue 27 the readout reads M_r itself).
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
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
// The hand-written AVX-512 versions ("twins") of the gated write and tanh, compiled where the CPU has AVX-512F
// unless STM_RL_NO_TWINS is defined (STM_RL_FUSED_KERNELS=loops: every kernel is then its portable loop, which
// the compiler vectorises for this CPU; benchmarks/train_speed.py --fused-kernels auto loops measures what they
// pay).
#if defined(__AVX512F__) && !defined(STM_RL_NO_TWINS)
#define STM_RL_TWINS 1
#endif
// One family of twins left out (STM_RL_FUSED_KERNELS=no-<family>-twin), to measure what each pays on its own:
// STM_RL_NO_TWIN_GATED_WRITE (eq. 10 both ways), STM_RL_NO_TWIN_TANH (tanh and SAM's scores). The twins of the
// update's backward pass (0.6% of the STM agent's training step) and of the encoder's ELU (0.9%; the ELU kernel
// went with it) were deleted; every other kernel is its portable loop.

namespace {

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
// The hand-written AVX-512 versions ("twins") of the gated write (both ways) and of tanh (the written item's
// tanh(M_i_prev) and SAM's scores' rows), on one vectorised exp.
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
        update_backward<T>(batch, slots, d, grad, carried, scores, values, grad_scores, grad_values, full,     \
                           grad_alpha_next);                                                                 \
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

extern "C" int stm_abi_version() { return 11; }

// Which vectorised paths this build took, one bit each (VECTORISED_PATHS in kernels.py): each
// dispatcher is asked with an empty input and answers whether it would run its vectorised version. The
// portable loops compute the same values, so without this a lost fast path would go unnoticed by tests.
extern "C" int64_t stm_vectorised_paths() {
    const float* none = nullptr;
    float* out = nullptr;
    const bool answers[] = {
        gated_write_forward_fast(0, 96, none, 0, none, none, none, out),
        gated_write_backward_fast(0, 96, none, none, 0, none, none, none, out, out, out, out),
        tanh_forward_fast(0, 0, none, 0, out),
    };
    int64_t bits = 0;
    for (size_t i = 0; i < sizeof(answers) / sizeof(answers[0]); ++i) bits |= int64_t(answers[i]) << i;
    return bits;
}
