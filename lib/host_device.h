// Marks the functions shared by host and device code: inlined everywhere,
// and compiled for the GPU too when nvcc builds them.
#pragma once

// Forced inline on the host where the compiler has the attribute.
#if defined(__GNUC__)
#define JAX_ROI_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define JAX_ROI_ALWAYS_INLINE inline
#endif

// JAX_ROI_HOST_DEVICE_INLINED is the same, forced inline on the host too:
// for the functions the CPU kernels call with GCC vectors. A vector
// argument is passed as its ISA says (AVX-512 in registers, baseline code
// in memory), and the kernels' vector bodies are AVX2 or AVX-512 code while
// a callee left out of line is baseline code (cpu/isa_dispatch.h): a call
// between them breaks its arguments (float16 results on the AVX-512 path
// crashed so).
#if defined(__CUDACC__)
#define JAX_ROI_HOST_DEVICE __host__ __device__ __forceinline__
#define JAX_ROI_HOST_DEVICE_INLINED __host__ __device__ __forceinline__
#else
#define JAX_ROI_HOST_DEVICE inline
#define JAX_ROI_HOST_DEVICE_INLINED JAX_ROI_ALWAYS_INLINE
#endif
