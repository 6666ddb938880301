// A check of native_step.cpp that runs without Python, for CPUs the tests cannot run on directly
// (ARM under qemu-user): each int8 kernel against the plain loop, then a whole decode step of a
// small seeded model, whose logits the test compares with an x86 build's and so with PyTorch's.
//
//   c++ -O2 -std=c++17 [target flags] tests/native/kernel_check.cpp -o check && ./check

#include "../../src/generation/native_step.cpp"

#include <cstdio>
#include <cstdlib>

namespace {

uint64_t state = 42;
float uniform() {  // in [-1, 1), the same sequence on every machine
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return float((state >> 40) & 0xFFFFFF) / float(1 << 23) - 1.0f;
}

struct Owned {  // a matrix's storage, float32 and int8 views of the same random weights
    std::vector<float> f32, scale;
    std::vector<int8_t> q8;
    std::vector<int32_t> row_sum;
    Matrix view(bool int8) const {
        return int8 ? Matrix{nullptr, q8.data(), scale.data(), row_sum.data(), int64_t(scale.size()),
                             int64_t(q8.size() / scale.size())}
                    : Matrix{f32.data(), nullptr, nullptr, nullptr, int64_t(scale.size()),
                             int64_t(f32.size() / scale.size())};
    }
};

Owned random_matrix(int64_t out, int64_t in) {
    Owned m;
    for (int64_t i = 0; i < out * in; i++) m.f32.push_back(0.3f * uniform());
    for (int64_t o = 0; o < out; o++) {  // symmetric per-row int8, as src/model/quantize.py
        float amax = 1e-8f;
        for (int64_t i = 0; i < in; i++) amax = std::fmax(amax, std::fabs(m.f32[o * in + i]));
        const float s = amax / 127.0f;
        int32_t sum = 0;
        for (int64_t i = 0; i < in; i++) {
            const int8_t q = int8_t(std::lround(m.f32[o * in + i] / s));
            m.q8.push_back(q);
            sum += q;
        }
        m.scale.push_back(s);
        m.row_sum.push_back(sum);
    }
    return m;
}

std::vector<float> random_vector(int64_t n, float offset, float spread) {
    std::vector<float> v;
    for (int64_t i = 0; i < n; i++) v.push_back(offset + spread * uniform());
    return v;
}

int check_kernel() {
    for (int64_t n : {1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 192, 448, 1000}) {
        std::vector<Act> a(n);
        std::vector<int8_t> w(4 * n);
        for (auto& v : a) v = Act(int32_t(std::lround(127.0f * uniform())) + ACTIVATION_OFFSET);
        for (auto& v : w) v = int8_t(std::lround(127.0f * uniform()));
        a[0] = Act(127 + ACTIVATION_OFFSET), w[0] = 127;  // the extremes, where int16 pairs could overflow
        if (n > 1) a[1] = Act(-127 + ACTIVATION_OFFSET), w[1] = -127;
        int32_t fast[4] = {0, 0, 0, 0}, plain[4] = {0, 0, 0, 0};
        dot4(a.data(), w.data(), n, n, fast);
        dot4_plain(a.data(), w.data(), n, 0, n, plain);
        for (int k = 0; k < 4; k++)
            if (fast[k] != plain[k]) {
                std::printf("kernel %s: n=%lld row %d: %d, plain loop %d\n", KERNEL_NAME, (long long)n, k, fast[k],
                            plain[k]);
                return 1;
            }
    }
    return 0;
}

// A decode step of a seeded model (2 layers, GQA, QK-norm): two rows, four tokens each.
void print_logits(bool int8) {
    const int64_t dim = 64, n_layers = 2, nh = 4, nkv = 2, hd = 16, ffn = 96, vocab = 67, cap = 8;
    state = 7;
    const std::vector<float> embedding = random_vector(vocab * dim, 0.0f, 1.0f), norm = random_vector(dim, 1.0f, 0.2f);
    std::vector<float> cos(cap * hd), sin(cap * hd);
    for (int64_t p = 0; p < cap; p++)
        for (int64_t i = 0; i < hd; i++) {
            const double angle = p * std::pow(10000.0, -double(2 * (i % (hd / 2))) / hd);
            cos[p * hd + i] = float(std::cos(angle)), sin[p * hd + i] = float(std::sin(angle));
        }
    std::vector<std::vector<float>> norms, caches;
    std::vector<Owned> matrices;
    std::vector<Layer> layers(n_layers);
    const Owned output = random_matrix(vocab, dim);
    for (int64_t l = 0; l < n_layers; l++) {
        for (int i = 0; i < 2; i++) norms.push_back(random_vector(dim, 1.0f, 0.2f));
        for (int i = 0; i < 2; i++) norms.push_back(random_vector(hd, 1.0f, 0.2f));
        matrices.push_back(random_matrix((nh + 2 * nkv) * hd, dim));
        matrices.push_back(random_matrix(dim, nh * hd));
        matrices.push_back(random_matrix(2 * ffn, dim));
        matrices.push_back(random_matrix(dim, ffn));
        for (int i = 0; i < 2; i++) caches.emplace_back(2 * nkv * cap * hd, 0.0f);
    }
    for (int64_t l = 0; l < n_layers; l++) {
        const auto* n = &norms[4 * l];
        const auto* m = &matrices[4 * l];
        layers[l] = Layer{n[0].data(), n[1].data(), n[2].data(), n[3].data(), m[0].view(int8), m[1].view(int8),
                          m[2].view(int8), m[3].view(int8), caches[2 * l].data(), caches[2 * l + 1].data()};
    }
    const Model model{dim, n_layers, nh, nkv, hd, ffn, vocab, cap, 1e-5f, embedding.data(), norm.data(),
                      cos.data(), sin.data(), output.view(int8), layers.data()};
    std::vector<float> logits(2 * vocab);
    for (int64_t pos = 0; pos < 4; pos++) {
        const int64_t tokens[2] = {(5 + 11 * pos) % vocab, (40 + 7 * pos) % vocab}, positions[2] = {pos, pos};
        native_decode_step(&model, 2, tokens, positions, nullptr, 0, logits.data(), 1);
    }
    std::printf("%s", int8 ? "int8" : "float32");
    for (float v : logits) std::printf(" %.7e", v);
    std::printf("\n");
}

}  // namespace

int main() {
    if (check_kernel() != 0) return 1;
    std::printf("kernel %s\n", KERNEL_NAME);
    print_logits(false);
    print_logits(true);
    return 0;
}
