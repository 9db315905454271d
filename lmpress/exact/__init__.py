"""The exact integer model: everything that decides an archive's bits, and the ways to compute it fast.

- ``arithmetic``: the arithmetic's constants and operations, defined once in torch (docs/FORMAT.md specifies it);
- ``tables``: the sigmoid and rotary tables, built with exact arithmetic;
- ``gemm``: exact int8 matrix products, by whichever backend this machine computes them fastest;
- ``kernels`` (with ``simd``'s intrinsics): compiled CPU twins of the operations, giving the same bits;
- ``ops``: the definitions or their compiled twins, chosen once per device;
- ``model``: a llama-family network's weights and its forward pass, read top to bottom;
- ``runner``: how one user runs the model (packed weights for narrow steps, fused decoding steps, AMX tiles).

Dependencies point one way: arithmetic ← kernels ← ops ← model ← runner.
"""

ENGINE = "int8-v1"  # names this arithmetic in archives; any change to it needs a new name
MAX_CONTEXT = 8192  # the most positions one context holds (a window, in the codec): bounds every cache
