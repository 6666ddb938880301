// One decode step of WikiMiniModel in one native call: every row's next token through every layer.
//
// In the spirit of llama2.c's run.c / runq.c: plain loops over float32 activations, with the
// matmuls either in float32 or, for int8 weights, llama.cpp's way: each activation row is
// quantized to 8 bits and multiplied with the int8 weights in integer dot products (AVX512-VNNI
// where the CPU has it). A prompt is prefilled by the same call, its tokens as rows of one cache
// row. Sampling and the cache's bookkeeping stay in PyTorch (src/generation/native.py); this
// file writes each row's new key/value into the same cache tensors and returns the logits.
//
// Built per machine with -march=native and OpenMP (the libgomp that torch has already loaded).

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define NATIVE_VNNI512 1
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
thread_local std::vector<uint8_t> xq_buf;
thread_local std::vector<float> xscale_buf;

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

inline int32_t dot_u8s8(const uint8_t* a, const int8_t* b, int64_t n) {
#ifdef NATIVE_VNNI512
    __m512i acc = _mm512_setzero_si512();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64)
        acc = _mm512_dpbusd_epi32(acc, _mm512_loadu_si512(a + i), _mm512_loadu_si512(b + i));
    if (i < n) {
        const __mmask64 m = _bzhi_u64(~0ULL, (unsigned)(n - i));
        acc = _mm512_dpbusd_epi32(acc, _mm512_maskz_loadu_epi8(m, a + i), _mm512_maskz_loadu_epi8(m, b + i));
    }
    return _mm512_reduce_add_epi32(acc);
#else
    int32_t sum = 0;
    for (int64_t i = 0; i < n; i++) sum += int32_t(a[i]) * int32_t(b[i]);
    return sum;
#endif
}

#ifdef NATIVE_VNNI512
// The dot products of one activation row with four consecutive weight rows (`stride` apart), as
// (w0.a, w1.a, w2.a, w3.a): one activation load feeds four accumulators, which are then
// reduced together.
inline __m128i dot4_u8s8(const uint8_t* a, const int8_t* w, int64_t stride, int64_t n) {
    __m512i acc0 = _mm512_setzero_si512(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        const __m512i x = _mm512_loadu_si512(a + i);
        acc0 = _mm512_dpbusd_epi32(acc0, x, _mm512_loadu_si512(w + i));
        acc1 = _mm512_dpbusd_epi32(acc1, x, _mm512_loadu_si512(w + stride + i));
        acc2 = _mm512_dpbusd_epi32(acc2, x, _mm512_loadu_si512(w + 2 * stride + i));
        acc3 = _mm512_dpbusd_epi32(acc3, x, _mm512_loadu_si512(w + 3 * stride + i));
    }
    if (i < n) {
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
    return _mm_add_epi32(_mm256_castsi256_si128(half), _mm256_extracti128_si256(half, 1));
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

// y (rows, w.out) = x (rows, w.in) @ w^T
void matmul(float* y, const float* x, const Matrix& w, int64_t rows, int threads) {
    const int64_t in = w.in, out = w.out;
    if (w.q8 == nullptr) {
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
        for (int64_t o = 0; o < out; o++)
            for (int64_t r = 0; r < rows; r++) y[r * out + o] = dot_f32(x + r * in, w.f32 + o * in, in);
        return;
    }
    // Each activation row to unsigned 8 bits: q = round(x / s) + 128, s = max|x| / 127. The +128
    // offset is taken back out with the weights' row sums: sum((q - 128) w) = sum(q w) - 128 sum(w).
    xq_buf.resize(rows * in);
    xscale_buf.resize(rows);
    for (int64_t r = 0; r < rows; r++) {
        const float* xr = x + r * in;
        float amax = 0.0f;
#pragma omp simd reduction(max : amax)
        for (int64_t i = 0; i < in; i++) amax = amax > std::fabs(xr[i]) ? amax : std::fabs(xr[i]);
        const float s = amax > 0.0f ? amax / 127.0f : 1.0f;
        const float inv = 1.0f / s;
        uint8_t* q = xq_buf.data() + r * in;
#pragma omp simd
        for (int64_t i = 0; i < in; i++) {  // round half away from zero, in [1, 255]
            const float v = xr[i] * inv;
            q[i] = uint8_t(int32_t(v + (v >= 0.0f ? 0.5f : -0.5f)) + 128);
        }
        xscale_buf[r] = s;
    }
    const uint8_t* xq = xq_buf.data();
    const float* xs = xscale_buf.data();
    const int64_t blocks = (out + 3) / 4;  // four output rows at a time
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t o0 = 4 * b;
#ifdef NATIVE_VNNI512
        if (o0 + 4 <= out) {
            const __m128i offset = _mm_slli_epi32(_mm_loadu_si128((const __m128i*)(w.row_sum + o0)), 7);
            const __m128 scale = _mm_loadu_ps(w.scale + o0);
            for (int64_t r = 0; r < rows; r++) {
                const __m128i dots = _mm_sub_epi32(dot4_u8s8(xq + r * in, w.q8 + o0 * in, in, in), offset);
                const __m128 values = _mm_mul_ps(_mm_mul_ps(_mm_cvtepi32_ps(dots), scale), _mm_set1_ps(xs[r]));
                _mm_storeu_ps(y + r * out + o0, values);
            }
            continue;
        }
#endif
        for (int64_t o = o0; o < out && o < o0 + 4; o++) {
            const int8_t* wo = w.q8 + o * in;
            const int32_t offset = 128 * w.row_sum[o];
            for (int64_t r = 0; r < rows; r++)
                y[r * out + o] = float(dot_u8s8(xq + r * in, wo, in) - offset) * w.scale[o] * xs[r];
        }
    }
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
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && rows * nh > 1)
        for (int64_t rh = 0; rh < rows * nh; rh++) {
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
        }
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
