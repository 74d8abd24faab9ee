"""On a GPU machine every Ray worker sees the GPU, so device 'auto' trains there (checked without a GPU)."""

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # the slow tier: pytest -m slow


PROBE = textwrap.dedent("""
    import os, sys, ray
    from fl_backdoor.training import share_gpus_with_workers
    if sys.argv[1] == "shared":
        share_gpus_with_workers()
    ray.init(address="local", include_dashboard=False, logging_level="ERROR")
    print("visible=" + str(ray.get(ray.remote(num_cpus=0)(lambda: os.environ.get("CUDA_VISIBLE_DEVICES")).remote())))
""")


def visible_in_worker(mode: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"}
    env.update({"CUDA_VISIBLE_DEVICES": "0", "RAY_ADDRESS": ""})
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout
    return next(line for line in out.splitlines() if line.startswith("visible="))[len("visible="):]


def test_workers_that_reserve_no_gpu_still_see_the_gpu():
    assert visible_in_worker("plain") == "", "Ray hides the GPU from a worker that reserves none"
    assert visible_in_worker("shared") == "0"


def test_asking_for_cuda_where_torch_sees_none_is_one_config_error():
    import pytest
    import torch

    from fl_backdoor.errors import ConfigError
    from fl_backdoor.training import pick_device

    if torch.cuda.is_available():
        assert pick_device("cuda").type == "cuda"
        return
    with pytest.raises(ConfigError, match=r"device=cuda, but torch .* sees no CUDA device"):
        pick_device("cuda")
    assert pick_device("auto").type == "cpu"
