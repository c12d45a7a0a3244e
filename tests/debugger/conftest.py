import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread(request: pytest.FixtureRequest):
    """The debugger tests run tiny models: a second intra-op thread only slows them on a shared machine, unless
    ``--torch-threads`` asks for a thread count to check them under."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.config.getoption("--torch-threads") or 1)
    yield
    torch.set_num_threads(before)
