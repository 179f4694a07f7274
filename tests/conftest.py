import warnings

import pytest


@pytest.fixture(autouse=True)
def _quiet_unchecked_vocab_warning():
    """Tiny test models have no tokenizer; the 'ids were not checked' warning is expected there."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no tokenizer for the target or the draft")
        yield
