import os
import warnings

import pytest

warnings.filterwarnings("ignore", category=FutureWarning)
os.environ.setdefault("TVM_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def host_target():
    from tvmquant.target import load_target

    return load_target("x86")
