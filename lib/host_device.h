// Marks the functions shared by host and device code: inlined everywhere,
// and compiled for the GPU too when nvcc builds them.
#pragma once

#if defined(__CUDACC__)
#define JAX_ROI_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define JAX_ROI_HOST_DEVICE inline
#endif
