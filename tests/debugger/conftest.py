import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The debugger tests run tiny models: a second intra-op thread only slows them on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
