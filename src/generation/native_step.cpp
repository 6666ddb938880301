// One decode step of WikiMiniModel in one native call: every row's next token through every layer.
//
// In the spirit of llama2.c's run.c / runq.c: plain loops over float32 activations, with the
// matmuls either in float32 or, for int8 weights, llama.cpp's way: each activation row is
// quantized to signed 8 bits and multiplied with the int8 weights in integer dot products, with
// one kernel per instruction set (AVX512-VNNI, AVX-VNNI, AVX2, NEON with and without the dot
// product extension, and a plain loop that every other CPU compiles). A prompt is prefilled by
// the same call, its tokens as rows of one cache row. Each row's next token is drawn here too
// (`native_sample`), and `native_decode_steps` runs several steps and draws in one call; the cache's
// bookkeeping stays in Python (src/generation/native.py), and each step writes every row's new
// key/value into the cache tensors that PyTorch allocated.
//
// Built per machine (-march=native, or -mcpu=native on ARM) with OpenMP where the compiler has it
// (the libgomp that torch has already loaded).

#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define KERNEL_AVX512_VNNI 1
#define KERNEL_NAME "avx512-vnni"
#define ACTIVATION_OFFSET 128  // dpbusd multiplies unsigned by signed bytes: activations go in + 128
#elif defined(__AVX2__)
#include <immintrin.h>
#define KERNEL_AVX2 1
#if defined(__AVXVNNI__)
#define KERNEL_NAME "avx-vnni"
#else
#define KERNEL_NAME "avx2"
#endif
#elif defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>
#define KERNEL_NEON 1
#if defined(__ARM_FEATURE_DOTPROD)
#define KERNEL_NAME "neon-dotprod"
#else
#define KERNEL_NAME "neon"
#endif
#else
#define KERNEL_NAME "scalar"
#endif
#ifndef ACTIVATION_OFFSET
#define ACTIVATION_OFFSET 0
#endif

extern "C" {

struct Matrix {             // a bias-free linear layer's weight, (out, in) row-major
    const float* f32;       // float32 weights, or null when int8
    const int8_t* q8;       // int8 weights, or null when float32
    const float* scale;     // int8: one scale per output row
    const int32_t* row_sum; // int8: each output row's sum of int8 weights
    int64_t out, in;
};

struct Layer {
    const float* attention_norm;
    const float* ffn_norm;
    const float* q_norm;    // per-head query/key norms, or null
    const float* k_norm;
    Matrix qkv, out, up, down;  // up: SwiGLU's gate and up projections, stacked
    float* keys;            // the cache: (rows, kv_heads, capacity, head_dim) float32
    float* values;
};

struct Sampling {           // one row's sampling settings and random state
    float temperature;      // 0: greedy
    float top_p;            // 1: off
    float penalty;          // repetition penalty on tokens already seen, 1: off
    int32_t top_k;          // 0: off
    uint64_t rng;           // the request's generator (splitmix64), advanced by each draw
};

struct Model {
    int64_t dim, n_layers, n_heads, n_kv_heads, head_dim, ffn, vocab, capacity;
    float eps;
    const float* embedding; // (vocab, dim)
    const float* norm;
    const float* rope_cos;  // (capacity, head_dim)
    const float* rope_sin;
    Matrix output;
    const Layer* layers;
};

}  // extern "C"

namespace {

// Scratch that lives across calls (one decode loop per thread calls in).
thread_local std::vector<float> x_buf, xb_buf, qkv_buf, att_buf, hidden_buf, score_buf;
// A quantized activation: q in [-127, 127], stored as q + ACTIVATION_OFFSET.
using Act = std::conditional_t<ACTIVATION_OFFSET == 0, int8_t, uint8_t>;
thread_local std::vector<Act> xq_buf;
thread_local std::vector<float> xscale_buf;
thread_local std::vector<float> sample_buf;  // sampling: one row's logits, then weights
thread_local std::vector<std::pair<float, int32_t>> candidate_buf;  // sampling: (logit, token), filtered rows

// exp(x) as Cephes' expf computes it: 2^k exp(r) with |r| <= ln2/2 and a degree-6 polynomial
// (about 1 ulp), written so the compiler vectorizes the loops that call it.
inline float exp_approx(float x) {
    x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
    const float k = std::floor(x * 1.44269504088896341f + 0.5f);
    const float r = x - k * 0.693359375f + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = (int32_t(k) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

void rms_norm(float* out, const float* x, const float* weight, int64_t n, float eps) {
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    const float inv = 1.0f / std::sqrt(ss / n + eps);
    for (int64_t i = 0; i < n; i++) out[i] = weight[i] * (x[i] * inv);
}

// The int8 dot products of one quantized activation row `a` with four consecutive weight rows
// (`stride` apart): out[k] = sum_i a[i] * w[k * stride + i], exactly, in int32 (the stored a, so
// with an offset the caller takes 128 * sum(w) back out). Activations and weights are in
// [-127, 127], so a pair of products fits int16 (the AVX2 kernel's maddubs).
inline int32_t dot_plain(const Act* a, const int8_t* w, int64_t from, int64_t n) {
    int32_t sum = 0;
    for (int64_t i = from; i < n; i++) sum += int32_t(a[i]) * int32_t(w[i]);
    return sum;
}

inline void dot4_plain(const Act* a, const int8_t* w, int64_t stride, int64_t from, int64_t n, int32_t out[4]) {
    for (int k = 0; k < 4; k++) out[k] += dot_plain(a, w + k * stride, from, n);
}

#if defined(KERNEL_AVX512_VNNI)
inline void dot4(const Act* a, const int8_t* w, int64_t stride, int64_t n, int32_t out[4]) {
    __m512i acc0 = _mm512_setzero_si512(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        const __m512i x = _mm512_loadu_si512(a + i);
        acc0 = _mm512_dpbusd_epi32(acc0, x, _mm512_loadu_si512(w + i));
        acc1 = _mm512_dpbusd_epi32(acc1, x, _mm512_loadu_si512(w + stride + i));
        acc2 = _mm512_dpbusd_epi32(acc2, x, _mm512_loadu_si512(w + 2 * stride + i));
        acc3 = _mm512_dpbusd_epi32(acc3, x, _mm512_loadu_si512(w + 3 * stride + i));
    }
    if (i < n) {  // masked-out bytes load as zero weights
        const __mmask64 m = _bzhi_u64(~0ULL, (unsigned)(n - i));
        const __m512i x = _mm512_maskz_loadu_epi8(m, a + i);
        acc0 = _mm512_dpbusd_epi32(acc0, x, _mm512_maskz_loadu_epi8(m, w + i));
        acc1 = _mm512_dpbusd_epi32(acc1, x, _mm512_maskz_loadu_epi8(m, w + stride + i));
        acc2 = _mm512_dpbusd_epi32(acc2, x, _mm512_maskz_loadu_epi8(m, w + 2 * stride + i));
        acc3 = _mm512_dpbusd_epi32(acc3, x, _mm512_maskz_loadu_epi8(m, w + 3 * stride + i));
    }
    // per 128-bit lane: (a0+a2, b0+b2, a1+a3, b1+b3), then (a, b, c, d); then the four lanes added
    const __m512i ab = _mm512_add_epi32(_mm512_unpacklo_epi32(acc0, acc1), _mm512_unpackhi_epi32(acc0, acc1));
    const __m512i cd = _mm512_add_epi32(_mm512_unpacklo_epi32(acc2, acc3), _mm512_unpackhi_epi32(acc2, acc3));
    const __m512i abcd = _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
    const __m256i half = _mm256_add_epi32(_mm512_castsi512_si256(abcd), _mm512_extracti64x4_epi64(abcd, 1));
    _mm_storeu_si128((__m128i*)out, _mm_add_epi32(_mm256_castsi256_si128(half), _mm256_extracti128_si256(half, 1)));
}

#elif defined(KERNEL_AVX2)
// a * w as |a| * (w with a's sign): unsigned times signed bytes, as llama.cpp's AVX2 q8_0 kernel.
inline __m256i dot32(__m256i acc, __m256i abs_a, __m256i sign_a, __m256i w) {
    const __m256i signed_w = _mm256_sign_epi8(w, sign_a);
#if defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, abs_a, signed_w);
#else
    const __m256i pairs = _mm256_maddubs_epi16(abs_a, signed_w);  // adjacent products summed, int16
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
#endif
}

inline void dot4(const Act* a, const int8_t* w, int64_t stride, int64_t n, int32_t out[4]) {
    __m256i acc0 = _mm256_setzero_si256(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m256i x = _mm256_loadu_si256((const __m256i*)(a + i));
        const __m256i ax = _mm256_sign_epi8(x, x);
        acc0 = dot32(acc0, ax, x, _mm256_loadu_si256((const __m256i*)(w + i)));
        acc1 = dot32(acc1, ax, x, _mm256_loadu_si256((const __m256i*)(w + stride + i)));
        acc2 = dot32(acc2, ax, x, _mm256_loadu_si256((const __m256i*)(w + 2 * stride + i)));
        acc3 = dot32(acc3, ax, x, _mm256_loadu_si256((const __m256i*)(w + 3 * stride + i)));
    }
    // (a, b, c, d) per 128-bit lane after two horizontal adds, then the two lanes added
    const __m256i abcd = _mm256_hadd_epi32(_mm256_hadd_epi32(acc0, acc1), _mm256_hadd_epi32(acc2, acc3));
    _mm_storeu_si128((__m128i*)out, _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1)));
    if (i < n) dot4_plain(a, w, stride, i, n, out);
}

#elif defined(KERNEL_NEON)
inline int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t w) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, a, w);
#else
    const int16x8_t pairs = vmlal_s8(vmull_s8(vget_low_s8(a), vget_low_s8(w)), vget_high_s8(a), vget_high_s8(w));
    return vpadalq_s16(acc, pairs);
#endif
}

inline void dot4(const Act* a, const int8_t* w, int64_t stride, int64_t n, int32_t out[4]) {
    int32x4_t acc0 = vdupq_n_s32(0), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const int8x16_t x = vld1q_s8(a + i);
        acc0 = dot16(acc0, x, vld1q_s8(w + i));
        acc1 = dot16(acc1, x, vld1q_s8(w + stride + i));
        acc2 = dot16(acc2, x, vld1q_s8(w + 2 * stride + i));
        acc3 = dot16(acc3, x, vld1q_s8(w + 3 * stride + i));
    }
    vst1q_s32(out, vpaddq_s32(vpaddq_s32(acc0, acc1), vpaddq_s32(acc2, acc3)));
    if (i < n) dot4_plain(a, w, stride, i, n, out);
}

#else
inline void dot4(const Act* a, const int8_t* w, int64_t stride, int64_t n, int32_t out[4]) {
    out[0] = out[1] = out[2] = out[3] = 0;
    dot4_plain(a, w, stride, 0, n, out);
}
#endif

inline float dot_f32(const float* a, const float* b, int64_t n) {
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; i++) sum += a[i] * b[i];
    return sum;
}

// One head's attention: o = softmax(q k^T / sqrt(hd)) v over `span` cached positions. HD > 0 fixes
// the head size at compile time, so the output accumulates in registers.
template <int HD>
void attend(float* o, const float* q, const float* keys, const float* values, float* scores, int64_t span,
            int64_t head_dim) {
    const int64_t hd = HD > 0 ? HD : head_dim;
    const float scale = 1.0f / std::sqrt(float(hd));
    float top = -INFINITY;
    for (int64_t t = 0; t < span; t++) {
        scores[t] = dot_f32(q, keys + t * hd, hd) * scale;
        top = top > scores[t] ? top : scores[t];
    }
    float total = 0.0f;
#pragma omp simd reduction(+ : total)
    for (int64_t t = 0; t < span; t++) {
        scores[t] = exp_approx(scores[t] - top);
        total += scores[t];
    }
    float acc[HD > 0 ? HD : 256];
    for (int64_t i = 0; i < hd; i++) acc[i] = 0.0f;
    for (int64_t t = 0; t < span; t++) {
        const float weight = scores[t];
        const float* v = values + t * hd;
#pragma omp simd
        for (int64_t i = 0; i < hd; i++) acc[i] += weight * v[i];
    }
    const float inv = 1.0f / total;
    for (int64_t i = 0; i < hd; i++) o[i] = acc[i] * inv;
}

// body(i) for i in 0..n-1, split over `threads` in OpenMP's static schedule. One thread calls it
// directly: an OpenMP region that its `if` clause turns off still costs a call into libgomp,
// and a step makes about twenty of them.
template <typename Body>
inline void parallel_for(int64_t n, int threads, const Body& body) {
    if (threads > 1 && n > 1) {
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t i = 0; i < n; i++) body(i);
    } else {
        for (int64_t i = 0; i < n; i++) body(i);
    }
}

// y (rows, w.out) = x (rows, w.in) @ w^T
void matmul(float* y, const float* x, const Matrix& w, int64_t rows, int threads) {
    const int64_t in = w.in, out = w.out;
    if (w.q8 == nullptr) {
        parallel_for(out, threads, [&](int64_t o) {
            for (int64_t r = 0; r < rows; r++) y[r * out + o] = dot_f32(x + r * in, w.f32 + o * in, in);
        });
        return;
    }
    // Each activation row to 8 bits: q = round(x / s), s = max|x| / 127.
    xq_buf.resize(rows * in);
    xscale_buf.resize(rows);
    for (int64_t r = 0; r < rows; r++) {
        const float* xr = x + r * in;
        float amax = 0.0f;
#pragma omp simd reduction(max : amax)
        for (int64_t i = 0; i < in; i++) amax = amax > std::fabs(xr[i]) ? amax : std::fabs(xr[i]);
        const float s = amax > 0.0f ? amax / 127.0f : 1.0f;
        const float inv = 1.0f / s;
        Act* q = xq_buf.data() + r * in;
#pragma omp simd
        for (int64_t i = 0; i < in; i++) {  // round half away from zero, in [-127, 127]
            const float v = xr[i] * inv;
            q[i] = Act(int32_t(v + (v >= 0.0f ? 0.5f : -0.5f)) + ACTIVATION_OFFSET);
        }
        xscale_buf[r] = s;
    }
    const Act* xq = xq_buf.data();
    const float* xs = xscale_buf.data();
    const int64_t blocks = (out + 3) / 4;  // four output rows at a time
    // Weights larger than the caches (the 24.5M reference model's) stream in far faster when each
    // block asks for the one PREFETCH_BLOCKS ahead than with the hardware prefetcher alone.
    constexpr int64_t PREFETCH_BLOCKS = 4;
    parallel_for(blocks, threads, [&](int64_t b) {
        const int64_t o0 = 4 * b, n_out = out - o0 < 4 ? out - o0 : 4;
        const int8_t* wb = w.q8 + o0 * in;
        int32_t offset[4] = {0, 0, 0, 0};  // the stored activations' offset times each row's sum
        if constexpr (ACTIVATION_OFFSET != 0)
            for (int64_t k = 0; k < n_out; k++) offset[k] = ACTIVATION_OFFSET * w.row_sum[o0 + k];
        if (b + PREFETCH_BLOCKS < blocks)  // a prefetch is a hint: past the end it does not fault
            for (int64_t j = 0; j < 4 * in; j += 64) __builtin_prefetch(wb + PREFETCH_BLOCKS * 4 * in + j);
        for (int64_t r = 0; r < rows; r++) {
            int32_t dots[4] = {0, 0, 0, 0};
            if (n_out == 4)
                dot4(xq + r * in, wb, in, in, dots);
            else  // the last, partial block, one row at a time (four would read past the weights)
                for (int64_t k = 0; k < n_out; k++) dots[k] = dot_plain(xq + r * in, wb + k * in, 0, in);
            for (int64_t k = 0; k < n_out; k++)
                y[r * out + o0 + k] = float(dots[k] - offset[k]) * w.scale[o0 + k] * xs[r];
        }
    });
}

// Rotate-half RoPE (Hugging Face's layout) of one head at one position.
void rope(float* v, const float* cos, const float* sin, int64_t head_dim) {
    const int64_t half = head_dim / 2;
    for (int64_t i = 0; i < half; i++) {
        const float a = v[i], b = v[i + half];
        v[i] = a * cos[i] - b * sin[i];
        v[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

// A uniform number in [0, 1) from a splitmix64 generator: 64 bits of state, the same sequence
// on every machine.
inline double uniform(uint64_t& state) {
    uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return double((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
}

// One row's next token from its logits, with src/generation/sampling.py's semantics (transformers'
// order): the repetition penalty on seen tokens, then greedy argmax, or temperature, top-k (ties at
// the k-th value kept), top-p over the top-k probabilities (a token goes once the more likely ones
// reach top_p; the first always stays), and one draw from the row's generator. The drawn token is
// marked seen.
int32_t sample_row(const float* logits, uint8_t* seen, Sampling& s, int64_t vocab) {
    std::vector<float>& v = sample_buf;  // the penalized logits, then (scaled) exp weights
    v.assign(logits, logits + vocab);
    if (s.penalty != 1.0f && seen != nullptr)
        for (int64_t i = 0; i < vocab; i++)
            if (seen[i]) v[i] = v[i] > 0.0f ? v[i] / s.penalty : v[i] * s.penalty;
    int32_t token = 0;
    if (s.temperature <= 0.0f) {  // greedy: the first of the largest
        for (int64_t i = 1; i < vocab; i++)
            if (v[i] > v[token]) token = int32_t(i);
    } else if (s.top_k <= 0 && s.top_p >= 1.0f) {  // plain: every token, in vocabulary order
        const float inv_t = 1.0f / s.temperature;
        float top = -INFINITY;
        for (int64_t i = 0; i < vocab; i++) top = std::max(top, v[i]);
        float total = 0.0f;
#pragma omp simd reduction(+ : total)
        for (int64_t i = 0; i < vocab; i++) total += (v[i] = exp_approx((v[i] - top) * inv_t));
        const double target = uniform(s.rng) * total;
        double cumulative = 0.0;
        token = int32_t(vocab - 1);  // where rounding leaves the target past the last sum
        for (int64_t i = 0; i < vocab; i++)
            if (target < (cumulative += v[i])) {
                token = int32_t(i);
                break;
            }
    } else {  // top-k and/or top-p: candidates by logit, largest first
        auto& cand = candidate_buf;
        cand.resize(vocab);
        for (int64_t i = 0; i < vocab; i++) cand[i] = {v[i], int32_t(i)};
        const auto larger = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
            return a.first > b.first || (a.first == b.first && a.second < b.second);
        };
        int64_t n = vocab;
        if (s.top_k > 0 && s.top_k < n) {  // the k largest, then every tie of the k-th
            std::nth_element(cand.begin(), cand.begin() + (s.top_k - 1), cand.end(), larger);
            const float kth = cand[s.top_k - 1].first;
            int64_t kept = s.top_k;
            for (int64_t i = s.top_k; i < n; i++)
                if (cand[i].first >= kth) std::swap(cand[kept++], cand[i]);
            n = kept;
        }
        std::sort(cand.begin(), cand.begin() + n, larger);
        const float top = cand[0].first, inv_t = 1.0f / s.temperature;
        double total = 0.0;
        for (int64_t i = 0; i < n; i++) total += (cand[i].first = exp_approx((cand[i].first - top) * inv_t));
        if (s.top_p < 1.0f) {  // the nucleus, in the probabilities after top-k
            double before = 0.0;
            int64_t kept = 0;
            while (kept < n && (kept == 0 || before < double(s.top_p) * total)) before += cand[kept++].first;
            n = kept;
            total = before;
        }
        const double target = uniform(s.rng) * total;
        double cumulative = 0.0;
        token = cand[n - 1].second;
        for (int64_t i = 0; i < n; i++)
            if (target < (cumulative += cand[i].first)) {
                token = cand[i].second;
                break;
            }
    }
    if (seen) seen[token] = 1;
    return token;
}

}  // namespace

// Row r's token goes to cache row cache_rows[r] (r when null) at positions[r]. Rows may share a
// cache row: a prompt's tokens at consecutive positions are then prefilled in one call, since
// each layer writes every row's key/value before any row attends. Logits are computed for rows
// logits_from..rows-1 only (a prefill needs its last token's).
extern "C" int native_decode_step(const Model* m, int64_t rows, const int64_t* tokens, const int64_t* positions,
                                  const int64_t* cache_rows, int64_t logits_from, float* logits, int threads) {
    const int64_t dim = m->dim, hd = m->head_dim, nh = m->n_heads, nkv = m->n_kv_heads, cap = m->capacity;
    const int64_t q_size = nh * hd, kv_size = nkv * hd, qkv_size = q_size + 2 * kv_size;
    const int64_t up_size = 2 * m->ffn;
    if (logits_from < 0 || logits_from >= rows) return 1;
    for (int64_t r = 0; r < rows; r++)
        if (tokens[r] < 0 || tokens[r] >= m->vocab || positions[r] < 0 || positions[r] >= cap) return 1;
    x_buf.resize(rows * dim);
    xb_buf.resize(rows * dim);
    qkv_buf.resize(rows * qkv_size);
    att_buf.resize(rows * q_size);
    hidden_buf.resize(rows * (up_size > dim ? up_size : dim));
    score_buf.resize(rows * nh * cap);
    float *x = x_buf.data(), *xb = xb_buf.data(), *qkv = qkv_buf.data(), *att = att_buf.data();
    float* hidden = hidden_buf.data();
    for (int64_t r = 0; r < rows; r++) std::memcpy(x + r * dim, m->embedding + tokens[r] * dim, dim * sizeof(float));

    for (int64_t l = 0; l < m->n_layers; l++) {
        const Layer& layer = m->layers[l];
        for (int64_t r = 0; r < rows; r++) rms_norm(xb + r * dim, x + r * dim, layer.attention_norm, dim, m->eps);
        matmul(qkv, xb, layer.qkv, rows, threads);
        for (int64_t r = 0; r < rows; r++) {  // norms, RoPE, and the new key/value into the cache
            float* q = qkv + r * qkv_size;
            const int64_t pos = positions[r];
            const float *cos = m->rope_cos + pos * hd, *sin = m->rope_sin + pos * hd;
            for (int64_t h = 0; h < nh + nkv; h++) {
                float* head = q + h * hd;
                const float* norm = h < nh ? layer.q_norm : layer.k_norm;
                if (norm) rms_norm(head, head, norm, hd, m->eps);
                rope(head, cos, sin, hd);
            }
            const int64_t row = cache_rows ? cache_rows[r] : r;
            for (int64_t h = 0; h < nkv; h++) {
                const int64_t at = ((row * nkv + h) * cap + pos) * hd;
                std::memcpy(layer.keys + at, q + q_size + h * hd, hd * sizeof(float));
                std::memcpy(layer.values + at, q + q_size + kv_size + h * hd, hd * sizeof(float));
            }
        }
        // Attention of each (row, head) over its row's positions 0..pos, softmax in float32.
        float* score_base = score_buf.data();  // this thread's scratch, shared with the team
        parallel_for(rows * nh, threads, [&](int64_t rh) {
            const int64_t r = rh / nh, h = rh % nh, kvh = h / (nh / nkv);
            const int64_t at = ((cache_rows ? cache_rows[r] : r) * nkv + kvh) * cap * hd;
            float* o = att + r * q_size + h * hd;
            const float* q = qkv + r * qkv_size + h * hd;
            float* scores = score_base + rh * cap;
            switch (hd) {  // the common head sizes with the output in registers
                case 32: attend<32>(o, q, layer.keys + at, layer.values + at, scores, positions[r] + 1, hd); break;
                case 64: attend<64>(o, q, layer.keys + at, layer.values + at, scores, positions[r] + 1, hd); break;
                default: attend<0>(o, q, layer.keys + at, layer.values + at, scores, positions[r] + 1, hd);
            }
        });
        matmul(xb, att, layer.out, rows, threads);
        for (int64_t i = 0; i < rows * dim; i++) x[i] += xb[i];

        for (int64_t r = 0; r < rows; r++) rms_norm(xb + r * dim, x + r * dim, layer.ffn_norm, dim, m->eps);
        matmul(hidden, xb, layer.up, rows, threads);
        const int64_t ffn = m->ffn;
        for (int64_t r = 0; r < rows; r++) {  // silu(gate) * up, packed into rows of ffn (row r's
            const float* row = hidden + r * up_size;  // output ends before row r's input starts)
            float* into = hidden + r * ffn;
#pragma omp simd
            for (int64_t i = 0; i < ffn; i++) into[i] = row[i] / (1.0f + exp_approx(-row[i])) * row[ffn + i];
        }
        matmul(xb, hidden, layer.down, rows, threads);
        for (int64_t i = 0; i < rows * dim; i++) x[i] += xb[i];
    }
    for (int64_t r = logits_from; r < rows; r++) rms_norm(xb + r * dim, x + r * dim, m->norm, dim, m->eps);
    matmul(logits, xb + logits_from * dim, m->output, rows - logits_from, threads);
    return 0;
}

// One token per row from logits (rows, vocab), row r with samplers[r], its seen tokens at
// seen + r * vocab (null: no penalty). The decode step's callers sample through this right after it.
extern "C" void native_sample(int64_t rows, int64_t vocab, const float* logits, uint8_t* seen, Sampling* samplers,
                              int64_t* tokens_out) {
    for (int64_t r = 0; r < rows; r++)
        tokens_out[r] = sample_row(logits + r * vocab, seen ? seen + r * vocab : nullptr, samplers[r], vocab);
}

// Up to `steps` decode steps of every row, each row's drawn token fed back as its next input
// (`inputs` and `positions` are updated): tokens_out[s * rows + r] is row r's token at step s.
// It stops after a step in which some row drew its stop token (stop_tokens[r], -1 for none) or
// used up its budget (budgets[r] tokens), and before a step that would write a position at or
// past max_position: no row ever decodes past its end. Returns the steps taken, -1 for a token id
// or position out of range.
extern "C" int64_t native_decode_steps(const Model* m, int64_t rows, int64_t* inputs, int64_t* positions,
                                       float* logits, uint8_t* seen, Sampling* samplers, const int64_t* stop_tokens,
                                       const int64_t* budgets, int64_t max_position, int64_t steps,
                                       int64_t* tokens_out, int threads) {
    for (int64_t step = 0; step < steps; step++) {
        for (int64_t r = 0; r < rows; r++)
            if (positions[r] >= max_position) return step;
        if (native_decode_step(m, rows, inputs, positions, nullptr, 0, logits, threads) != 0) return -1;
        int64_t* drawn = tokens_out + step * rows;
        native_sample(rows, m->vocab, logits, seen, samplers, drawn);
        bool finished = false;
        for (int64_t r = 0; r < rows; r++) {
            inputs[r] = drawn[r];
            positions[r] += 1;
            finished = finished || drawn[r] == stop_tokens[r] || step + 1 >= budgets[r];
        }
        if (finished) return step + 1;
    }
    return steps;
}

// Which int8 kernel this build compiled, and its matmul alone: for tests and benches that hold
// each build against the plain loop and against PyTorch on the same weights.
extern "C" const char* native_kernel() { return KERNEL_NAME; }

extern "C" void native_matmul(const Matrix* w, int64_t rows, const float* x, float* y, int threads) {
    matmul(y, x, *w, rows, threads);
}
