"""bench/step_time.py's CPU memory measure (the peak of live tensor bytes, replayed from torch.profiler) and
bench/step_profile.py's breakdown of a step by kind of operator."""
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


def test_step_profile_sums_operator_self_time_by_kind():
    """bench/step_profile.py's breakdown: every operator's self time lands in exactly one kind, per step."""
    step_profile = import_bench("step_profile")
    a, x = torch.randn(256, 256), torch.randn(64, 1024)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.mm(a, a)
        torch.bmm(a[None], a[None])
        torch.nn.functional.dropout(x, 0.1, training=True)  # a bernoulli_ mask
        torch.randn(1000)  # normal_
        x.exp()
    events = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    s = step_profile.by_kind(prof, steps=1)
    assert s["matrix products"] == sum(events[k] for k in ("aten::mm", "aten::bmm"))
    assert s["random draws"] == sum(events[k] for k in ("aten::bernoulli_", "aten::normal_"))
    assert events["aten::exp"] > 0 and s["everything else"] >= events["aten::exp"]
    assert abs(s["total"] - sum(events.values())) < 1e-9
    halved = step_profile.by_kind(prof, steps=2)
    assert all(abs(halved[k] - s[k] / 2) < 1e-12 for k in s)
