/* mg_cuda: CUDA runtime checker macros and device detection that works without a driver.
 * Only the CUDA runtime library is used (never libcuda). */
#ifndef MG_CUDA_H
#define MG_CUDA_H

#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include "mg_err.h"

/* Inside functions returning an mg_err code: on failure sets err to
 * "file:line: call: CUDA error text" and returns MG_EINTERNAL. */
#define MG_CUDA_TRY(call, err) do { \
        cudaError_t mg_e_ = (call); \
        if (mg_e_ != cudaSuccess) \
            return mg_err_set((err), MG_EINTERNAL, "%s:%d: %s: %s (%s)", __FILE__, __LINE__, #call, \
                              cudaGetErrorString(mg_e_), cudaGetErrorName(mg_e_)); \
    } while (0)

/* Fatal form for tests and tools (llm.c's cudaCheck): prints file:line and exits. */
#define cudaCheck(call) do { \
        cudaError_t mg_e_ = (call); \
        if (mg_e_ != cudaSuccess) { \
            fprintf(stderr, "[CUDA ERROR] at %s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(mg_e_)); \
            exit(EXIT_FAILURE); } \
    } while (0)

/* Number of usable CUDA devices; 0 (never an error) when there is no driver or no device.
 * why (optional) receives the reason for 0. */
static inline int mg_cuda_device_count(char *why, size_t n)
{
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        if (why) snprintf(why, n, "%s", cudaGetErrorString(e));
        (void)cudaGetLastError();
        return 0;
    }
    if (count == 0 && why) snprintf(why, n, "no CUDA device");
    return count;
}

/* The NVRTC arch for device dev: "sm_90a" on 9.0, "sm_80" on 8.x, else sm_<major><minor>. */
static inline int mg_cuda_arch(int dev, char *buf, size_t n)
{
    int major = 0, minor = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess)
        return -1;
    if (major == 9 && minor == 0) snprintf(buf, n, "sm_90a");
    else if (major == 8) snprintf(buf, n, "sm_80");
    else snprintf(buf, n, "sm_%d%d", major, minor);
    return 0;
}

#endif
