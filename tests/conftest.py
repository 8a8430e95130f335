import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["MOORE_SVD_CACHE"] = "off"  # tests that need the cache pass a directory explicitly

import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import MODEL_BUILDERS  # noqa: E402

# under pytest-xdist (-n N) the workers share the cores: one worker's torch must not take them all
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=sorted(MODEL_BUILDERS))
def model_name(request):
    return request.param
