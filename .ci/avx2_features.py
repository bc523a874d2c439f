"""Print this CPU's LLVM feature string with AVX-512 (and AMX, AVX10) turned off, for NUMBA_CPU_FEATURES.

NUMBA_CPU_NAME=haswell alone still hands LLVM the host's features, AVX-512 included, and Numba's
kernels keep their 512-bit code; with these features as well they compile as on an AVX2-only CPU.
"""

from numba.core.codegen import get_host_cpu_features

OFF = ("avx512", "amx", "avx10", "evex512")
features = get_host_cpu_features().split(",")
print(",".join("-" + f[1:] if f.startswith("+") and f[1:].startswith(OFF) else f for f in features))
