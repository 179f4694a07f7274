import os

import torch

# transformers imports triton when it is installed, and triton reads TRITON_INTERPRET when it is first
# imported: on a machine without CUDA the kernel tests need the interpreter, so it is set here, before
# any test module imports transformers (on a GPU machine the compiled kernels run instead).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import warnings  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _quiet_unchecked_vocab_warning():
    """Tiny test models have no tokenizer; the 'ids were not checked' warning is expected there."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no tokenizer for the target or the draft")
        yield
