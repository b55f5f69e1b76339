import pytest
import torch

from zofed.errors import ZofedError
from zofed.runtime.flower.simulation import sim_backend_config

from ..helpers import tiny_config


def test_on_the_cpu_workers_split_the_cores_and_ask_for_no_gpu(tmp_path):
    config = tiny_config(tmp_path, "fedmezo", "device=cpu", "flower.sim_workers=2")
    backend = sim_backend_config(config)
    cpus = max(1, torch.get_num_threads() // 2)
    assert backend["client_resources"] == {"num_cpus": cpus, "num_gpus": 0.0}
    assert backend["init_args"]["num_cpus"] == 2 * cpus and backend["init_args"]["num_gpus"] == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_the_workers_share_one_gpu(tmp_path):
    backend = sim_backend_config(tiny_config(tmp_path, "fedmezo", "device=cuda", "flower.sim_workers=4"))
    assert backend["client_resources"]["num_gpus"] == 0.25 and backend["init_args"]["num_gpus"] == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_numbered_gpu_is_refused_for_ray_to_choose(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    with pytest.raises(ZofedError, match="use device=cuda and choose the GPU with CUDA_VISIBLE_DEVICES"):
        sim_backend_config(tiny_config(tmp_path, "fedmezo", "device=cuda:1"))
