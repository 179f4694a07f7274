"""Tree attention for verification passes (layer L2): a Triton kernel, SDPA and reference backends.

`tree_attention(q, k, v, prefix_lens, tree_mask)` is the one entry point; see `specdec.kernels.api`.
Importing this package never imports triton: the kernel module loads on the first Triton call, so
TRITON_INTERPRET=1 (CPU tests) may be set any time before that.
"""

from specdec.kernels.api import (
    BACKENDS,
    MAX_NEW_ROWS,
    TRITON_HEAD_DIMS,
    available_backends,
    resolve_backend,
    tree_attention,
    triton_available,
)
from specdec.kernels.reference import dense_tree_mask, reference_tree_attention

__all__ = [
    "BACKENDS",
    "MAX_NEW_ROWS",
    "TRITON_HEAD_DIMS",
    "available_backends",
    "dense_tree_mask",
    "reference_tree_attention",
    "resolve_backend",
    "tree_attention",
    "triton_available",
]
