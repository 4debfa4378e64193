// moe-cpp: the bundled tiny MoE layer from C++: an RAII owner for the layer and its
// workspace, forward + backward on random data, outputs checked finite.
#include "moe_tiny.h"
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

void check(cudaError_t e, const char *what)
{
    if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

template <class T> struct dev_buf {   // device memory owned by scope
    T *p = nullptr;
    explicit dev_buf(size_t n) { check(cudaMalloc(reinterpret_cast<void **>(&p), n * sizeof(T)), "cudaMalloc"); }
    ~dev_buf() { cudaFree(p); }
    dev_buf(const dev_buf &) = delete;
    dev_buf &operator=(const dev_buf &) = delete;
};

class tiny_layer {   // the C handle with destroy in the destructor
public:
    tiny_layer()
    {
        moe_tiny_config cfg{-1, nullptr, err_, sizeof err_};
        status_ = moe_tiny_create(&layer_, &cfg);
    }
    ~tiny_layer() { moe_tiny_destroy(layer_); }
    tiny_layer(const tiny_layer &) = delete;
    tiny_layer &operator=(const tiny_layer &) = delete;
    int status() const { return status_; }
    const char *why() const { return err_; }
    moe_tiny *get() { return layer_; }
    void ok(int st) const
    {
        if (st) throw std::runtime_error(std::string(moe_tiny_strerror(st)) + ": " + moe_tiny_last_error(layer_));
    }

private:
    moe_tiny *layer_ = nullptr;
    int status_ = 0;
    char err_[256] = "";
};

uint16_t to_bf16(float f)
{
    uint32_t u;
    std::memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
}
float from_bf16(uint16_t h)
{
    uint32_t u = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

}  // namespace

int main()
{
    tiny_layer layer;
    if (layer.status() == MOE_TINY_ENODEVICE) {
        std::printf("skipped: no CUDA device\n");
        return 0;
    }
    if (layer.status()) {
        std::fprintf(stderr, "moe-cpp: create: %s: %s\n", moe_tiny_strerror(layer.status()), layer.why());
        return 2;
    }
    try {
        const int T = 100, D = MOE_TINY_D, E = MOE_TINY_EXPERTS, F2 = MOE_TINY_F2, FF = MOE_TINY_FF;
        std::mt19937 gen(1);
        std::uniform_real_distribution<float> u(-0.1f, 0.1f);
        auto upload = [&](size_t n) {
            std::vector<uint16_t> h(n);
            for (auto &v : h) v = to_bf16(u(gen));
            auto *d = new dev_buf<uint16_t>(n);
            check(cudaMemcpy(d->p, h.data(), n * 2, cudaMemcpyHostToDevice), "upload");
            return d;
        };
        std::unique_ptr<dev_buf<uint16_t>> x(upload(size_t(T) * D)), dy(upload(size_t(T) * D)),
            wg(upload(size_t(E) * D)), wup(upload(size_t(E) * F2 * D)), wdn(upload(size_t(E) * D * FF));
        dev_buf<uint16_t> y(size_t(T) * D), dx(size_t(T) * D);
        dev_buf<float> dwg(size_t(E) * D), dwup(size_t(E) * F2 * D), dwdn(size_t(E) * D * FF);
        dev_buf<unsigned char> ws(moe_tiny_workspace_size(layer.get(), T));
        cudaStream_t s;
        check(cudaStreamCreate(&s), "cudaStreamCreate");
        layer.ok(moe_tiny_forward(layer.get(), s, x->p, wg->p, wup->p, wdn->p, y.p, ws.p, T));
        layer.ok(moe_tiny_backward(layer.get(), s, x->p, wg->p, wup->p, wdn->p, dy->p, dx.p, dwg.p, dwup.p, dwdn.p,
                                   ws.p, T));
        check(cudaStreamSynchronize(s), "sync");
        std::vector<uint16_t> hy(size_t(T) * D), hdx(size_t(T) * D);
        check(cudaMemcpy(hy.data(), y.p, hy.size() * 2, cudaMemcpyDeviceToHost), "download");
        check(cudaMemcpy(hdx.data(), dx.p, hdx.size() * 2, cudaMemcpyDeviceToHost), "download");
        cudaStreamDestroy(s);
        double sy = 0, sdx = 0;
        bool finite = true;
        for (size_t i = 0; i < hy.size(); i++) {
            float a = from_bf16(hy[i]), b = from_bf16(hdx[i]);
            finite = finite && std::isfinite(a) && std::isfinite(b);
            sy += std::fabs(a), sdx += std::fabs(b);
        }
        std::printf("moe-cpp: image %s, T=%d, mean|y| %.4g, mean|dx| %.4g: %s\n", moe_tiny_image(layer.get()), T,
                    sy / hy.size(), sdx / hdx.size(), finite && sy > 0 ? "PASS" : "FAIL");
        return finite && sy > 0 ? 0 : 1;
    } catch (const std::exception &e) {
        std::fprintf(stderr, "moe-cpp: %s\n", e.what());
        return 2;
    }
}
