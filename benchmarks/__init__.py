"""Speed and memory benchmarks: `python -m benchmarks.<name> [--quick]`.

See benchmarks/README.md for what each measures and the recorded results.
"""
import os

# A multi-threaded OpenBLAS busy-waits for its threads; on a loaded 2-core
# machine that made each small QR of the orthogonal initialiser ~150x slower
# (1.4 s instead of 0.01 s for a 1728x96 matrix). XLA's own kernels do not
# use OpenBLAS. Set before NumPy loads OpenBLAS; an explicit setting wins.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')
