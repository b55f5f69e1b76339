"""Put on PYTHONPATH of a SuperNode (and the processes it starts): it reports to the SuperLink every 10 s, Flower's
least interval, instead of every 30 s. The SuperLink marks a node offline after two missed intervals, so a test
that kills a node waits 10-20 s for the SuperLink to say so, not 30-60 s. Flower has no option for it.

Only the node heartbeat's modules get the short interval, each patched right after it is imported (they copy the
constant at import). Flower's task bookkeeping reads the same constant: a ClientApp or ServerApp process must
start within one interval and then report every interval, or its task is relaunched or failed. Patching the
constant everywhere (as this file once did) shortened those windows to 10 s too, and on a loaded 2-core machine a
fleet's ClientApps missed them, were relaunched, and buried the machine in hundreds of ClientApp processes."""

import importlib.abc
import importlib.machinery
import sys

QUICK_INTERVAL = 10  # flwr.common.constant.HEARTBEAT_MIN_INTERVAL (not imported here: every process would pay for it)
HEARTBEAT_MODULES = ("flwr.supercore.heartbeat", "flwr.supernode.fleet_http_connection")


class _QuickHeartbeat(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in HEARTBEAT_MODULES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            module.HEARTBEAT_DEFAULT_INTERVAL = QUICK_INTERVAL

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _QuickHeartbeat())
