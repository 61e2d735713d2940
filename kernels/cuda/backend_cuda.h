// The CUDA backend's few entry points besides the ops table (backend_cuda() in backend.h),
// callable from C: device choice before the backend starts, and the stream the backend runs
// on, for transports that must order their copies with the kernels (comm_nccl.c).
// Nothing here dies when there is no GPU or no driver: cuda_device_count() is 0 then.
#pragma once
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// GPUs visible to this process; 0 without a driver or device (never dies).
int cuda_device_count(void);
// Makes `device` current for this process; call before the first backend_cuda().
void cuda_select_device(int device);
// PCI bus id of `device` ("0000:3b:00.0") into buf; 0 on success.
int cuda_device_pci_bus_id(int device, char *buf, int len);
// "NVIDIA H100 80GB HBM3, sm_90, 132 SMs, 79.1 GiB, driver 13.0, runtime 13.0" of the current device.
const char *cuda_device_description(void);
// Peak memory bandwidth of the current device in bytes/s from its clock and bus width
// (the figure the weight-read bound uses); 0 if the runtime does not say.
double cuda_device_peak_bandwidth(void);
// The cudaStream_t every op of the backend is issued on (as void *, for C without CUDA headers).
void *backend_cuda_stream(void);
// Which grouped expert-FFN path to use for experts with more than a few tokens:
// "auto" (default), "lt" (one cuBLASLt GEMM per expert, in order on the backend stream) or
// "gemv" (the small-batch kernel for every count; slow for prefill, for tests). Also read from
// LLAMOE_CUDA_GROUPED at start-up. Returns 0, or -1 for an unknown name.
int backend_cuda_set_grouped(const char *name);

#ifdef __cplusplus
}
#endif
