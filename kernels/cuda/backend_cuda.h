// The CUDA backend's entry points besides the ops table (backend_cuda_new() in
// kernels/backend.h), callable from C: device queries before a backend exists, and what a
// program asks of the backend object (its stream, for transports that must order their
// copies with the kernels; its device, for reports). Nothing here dies when there is no GPU
// or no driver: cuda_device_count() is 0 then.
#pragma once
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

struct backend;

// GPUs visible to this process; 0 without a driver or device (never dies).
int cuda_device_count(void);
// PCI bus id of `device` ("0000:3b:00.0") into buf; 0 on success.
int cuda_device_pci_bus_id(int device, char *buf, int len);
// "NVIDIA H100 80GB HBM3, sm_90, 132 SMs, 79.1 GiB, driver 13.0, runtime 13.0, expert GEMM grouped".
const char *backend_cuda_description(struct backend *be);
// Peak memory bandwidth of the backend's device in bytes/s from its clock and bus width
// (the figure the weight-read bound uses); 0 if the runtime does not say.
double backend_cuda_peak_bandwidth(struct backend *be);
// The cudaStream_t every op of the backend is issued on (as void *, for C without CUDA headers).
void *backend_cuda_stream(struct backend *be);

#ifdef __cplusplus
}
#endif
