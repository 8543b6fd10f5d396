"""Run run_glue_no_trainer.py as one process of a launch and print, on stdout, how many of gloo's threads are alive
right after the process group is ended: 0 when the group's last reference was the one dropped there, i.e. nothing
else (the DistributedDataParallel model) still held it. Linux only (the threads are counted in
/proc/self/task); elsewhere it prints nothing."""
import os
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import run_glue_no_trainer  # noqa: E402

GLOO_THREADS = ("gloo_tcp_loop", "pt_gloo_runloop")
_destroy = dist.destroy_process_group


def _gloo_threads() -> int:
    names = (Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task"))
    return sum(name in GLOO_THREADS for name in names)


def destroy_and_count(*args, **kwargs):
    _destroy(*args, **kwargs)
    if os.path.isdir("/proc/self/task"):
        print(f"gloo threads after leaving: {_gloo_threads()}", flush=True)


dist.destroy_process_group = destroy_and_count
sys.exit(run_glue_no_trainer.main())
