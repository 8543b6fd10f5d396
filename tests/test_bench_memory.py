"""bench/step_time.py's CPU memory measure: the peak of live tensor bytes, replayed from torch.profiler."""
import importlib.util
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parents[1]


def _step_time():
    spec = importlib.util.spec_from_file_location("step_time", REPO / "bench" / "step_time.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _profiled(fn):
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    return prof._memory_profile().timeline


def test_tensor_peak_counts_live_tensors_only():
    step_time = _step_time()
    MiB = 2**20
    before = torch.zeros(MiB // 4)  # exists before profiling: not counted

    def body():
        a = torch.zeros(4 * MiB // 4)
        b = torch.zeros(2 * MiB // 4)
        del a  # peak 6 MiB here
        c = torch.zeros(3 * MiB // 4)  # 5 MiB live
        before.add_(1)  # in place on an older tensor: no new memory
        del b, c

    assert step_time._tensor_peak(_profiled(body)) == 6 * MiB

