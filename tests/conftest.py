import os

import pytest
import torch

torch.set_num_threads(1)  # xdist runs two workers on two cores
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
