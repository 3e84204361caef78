import os

import pytest
import torch

import aspen_torch
from aspen_torch.options import default_num_dses

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _seed_and_reset():
    torch.manual_seed(0)
    yield
    torch._dynamo.reset()
    # A test's num_dses option resizes the shared runtime, and tiling follows its size: put
    # it back so that no later test's plan depends on which tests ran before it.
    if aspen_torch.runtime_stats()["num_dses"] not in (0, default_num_dses()):
        aspen_torch.set_num_dses(default_num_dses())
