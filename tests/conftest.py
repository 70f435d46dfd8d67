"""Test-wide settings.

One intra-op thread: the suite is made of many small tensor ops, which run 10x slower when two
threads contend on a shared 2-core machine (measured by the bench engineer: 90 s vs 8 s for
tests/test_transformer.py under load). The fixture also restores the count after each test,
so a test that changes it (make-dataset's --threads) cannot leak into the next one.
"""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
