"""bench/step_time.py's CPU memory measure: the peak of live tensor bytes, replayed from torch.profiler."""
import torch
from torch.profiler import ProfilerActivity, profile

from _run_glue_utils import import_bench


def _step_time():
    return import_bench("step_time")


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

