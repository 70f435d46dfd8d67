"""Test-wide settings.

One intra-op thread: the suite is made of many small tensor ops, which run 10x slower when two
threads contend on a shared 2-core machine (measured by the bench engineer: 90 s vs 8 s for
tests/test_transformer.py under load).
"""

import torch

torch.set_num_threads(1)
