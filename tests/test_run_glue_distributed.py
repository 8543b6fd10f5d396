"""run_glue_no_trainer.py under `accelerate launch` with 2 CPU processes (gloo).

* VILoRA + IVON: every process ends with the same posterior (means, momentum, Hessian), the same rank pattern
  and the same dev metric over exactly the dev set, while drawing its own noise; a run resumed from a
  2-process checkpoint ends bit-identical to the uninterrupted one.
* AdaLoRA + AdamW: 2 processes with half the per-device batch give the single-process result (weights to
  1e-5, same rank pattern, metrics and log), including gradient accumulation and a last batch of one example.
* A bad flag stops every process with status 2, reported once, before anything is written.

Each process dumps its final state to RUN_GLUE_DEBUG_DUMP_DIR/rank<r>.pt for the comparisons.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _run_glue_utils import (REPO, SCRIPT, accelerate_launch, finish_processes, have_adapters, make_tiny_model,
                             process_env, read_log, read_results, spawn_ranks, write_tiny_glue)

pytestmark = pytest.mark.skipif(not have_adapters(), reason="peft/ivon packages not available yet")
N_DEV = 15  # odd: the second process's last eval batch is padded, and the padding must not be scored


def _launch(args: list[str], processes: int, dump: Path | None = None) -> subprocess.CompletedProcess:
    """Run the script in `processes` processes (accelerate launch) or in a fresh interpreter (1)."""
    env = {"RUN_GLUE_DEBUG_DUMP_DIR": str(dump)} if dump else {}
    if processes > 1:
        return accelerate_launch(args, processes, **env)
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=150,
                          cwd=REPO, env=process_env(**env))


def _ok(res: subprocess.CompletedProcess) -> None:
    assert res.returncode == 0, res.stdout[-1500:] + res.stderr[-3000:]


def _dumps(folder: Path, n: int = 2) -> list[dict]:
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(n)]


def _without_runtime(results: dict) -> dict:
    return {k: v for k, v in results.items() if k != "train_runtime_s"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    return {"model": make_tiny_model(root / "model"), "model_nodrop": make_tiny_model(root / "model0", dropout=0.0),
            "glue": write_tiny_glue(root / "glue", "rte", n_train=48, n_dev=N_DEV),
            # 41 = 5 x 8 + 1: the last global batch has one example, so one process runs it with weight 0
            "glue41": write_tiny_glue(root / "glue41", "rte", n_train=41, n_dev=N_DEV)}


VILORA = ["--task_name", "rte", "--seed", "5", "--per_device_train_batch_size", "4", "--max_train_steps", "12",
          "--eval_steps", "4", "--eval_after_epochs", "0", "--checkpointing_steps", "6", "--apply_lora",
          "--lora_type", "vilora", "--adalora_init_r", "3", "--adalora_target_r", "2", "--adalora_tinit", "2",
          "--adalora_tfinal", "3", "--adalora_delta_t", "1", "--learning_rate", "0.05", "--ivon_infer_mc_samples",
          "2", "--lora_dropout", "0.1"]


@pytest.fixture(scope="module")
def vilora_run(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("vilora")
    args = ["--model_name_or_path", str(data["model"]), "--glue_dir", str(data["glue"]), *VILORA]
    _ok(_launch(args + ["--output_dir", str(root / "out")], 2, dump=root / "dump"))
    return root, args


def test_vilora_ivon_processes_hold_one_posterior(vilora_run):
    root, _ = vilora_run
    out, (d0, d1) = root / "out", _dumps(root / "dump")
    assert d0["completed_steps"] == d1["completed_steps"] == 12 and d0["ivon_step"] == d1["ivon_step"] == 12
    assert d0["params"].keys() == d1["params"].keys()
    assert all(torch.equal(d0["params"][n], d1["params"][n]) for n in d0["params"])
    assert all(torch.equal(d0["ivon"][n][k], d1["ivon"][n][k]) for n in d0["ivon"] for k in ("momentum", "hess"))
    assert d0["rank_pattern"] == d1["rank_pattern"] and not all(all(v) for v in d0["rank_pattern"].values())
    # each process sampled its own noise (and dropout): their RNG streams differ
    assert not torch.equal(d0["torch_rng"], d1["torch_rng"])
    # the Hessian moved, so the synced statistics were used
    assert any(not torch.equal(s["hess"], torch.ones_like(s["hess"])) for s in d0["ivon"].values())

    # what the main process wrote is that common state
    assert json.loads((out / "rank_pattern.json").read_text()) == d0["rank_pattern"]
    saved = torch.load(out / "ivon_state.pt", weights_only=True)["params"]
    kept = {n for n in saved if ".lora_" not in n}  # heads are not resized: compare them directly
    assert kept and all(torch.equal(saved[n]["hess"], d0["ivon"][n]["hess"]) for n in kept)
    adapter = load_file(out / "adapter_model.safetensors")
    head = [k for k in adapter if "classifier" in k]
    assert head and all(torch.equal(adapter[k], d0["params"][k.replace(".weight", ".modules_to_save.default.weight")
                                                          .replace(".bias", ".modules_to_save.default.bias")])
                        for k in head)

    # one log, written once; every evaluation scored exactly the dev set, on both processes alike
    log = read_log(out)
    train_steps = [r["step"] for r in log if "train_loss" in r]
    assert train_steps == list(range(1, 13))
    evals = [r for r in log if "eval_accuracy" in r]
    assert evals and all(r["n_eval"] == N_DEV for r in evals)
    assert d0["n_eval"] == d1["n_eval"] == N_DEV and d0["last_eval"] == d1["last_eval"]
    res = read_results(out)
    assert res["eval_accuracy"] == d0["last_eval"]["eval_accuracy"] and res["train_steps"] == 12
    cfg = json.loads((out / "run_config.json").read_text())
    assert cfg["num_processes"] == 2 and cfg["total_train_batch_size"] == 8
    ckpt = out / "checkpoints" / "step_6"
    assert (ckpt / "rng.pt").is_file() and (ckpt / "rng_rank1.pt").is_file()
    assert not list((out / "checkpoints").glob(".tmp_*"))


def test_vilora_ivon_resume_from_two_process_checkpoint_is_exact(vilora_run, tmp_path):
    root, args = vilora_run
    ref, resumed = root / "out", tmp_path / "out"
    shutil.copytree(ref, resumed)
    (resumed / "all_results.json").unlink()
    shutil.rmtree(resumed / "checkpoints" / "step_12")  # as if killed between step 6 and 12
    res = _launch(args + ["--output_dir", str(resumed), "--resume_from_checkpoint", "latest"], 2,
                  dump=tmp_path / "dump")
    _ok(res)
    assert "resumed from" in res.stdout + res.stderr
    assert _without_runtime(read_results(resumed)) == _without_runtime(read_results(ref))
    assert read_log(resumed) == read_log(ref)
    a, b = load_file(ref / "adapter_model.safetensors"), load_file(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    d_ref, d_res = _dumps(root / "dump"), _dumps(tmp_path / "dump")
    for x, y in zip(d_ref, d_res):  # each process continued its own RNG stream
        assert torch.equal(x["torch_rng"], y["torch_rng"])


def test_adalora_sensitivity_under_ivon_allocates_alike(data, tmp_path):
    """Under IVON each process's p.grad is its own sample's; the sensitivity score must see their average."""
    args = ["--model_name_or_path", str(data["model"]), "--task_name", "rte", "--glue_dir", str(data["glue"]),
            "--seed", "7", "--per_device_train_batch_size", "4", "--max_train_steps", "8", "--apply_lora",
            "--lora_type", "adalora", "--use_ivon", "--adalora_init_r", "3", "--adalora_target_r", "2",
            "--adalora_tinit", "1", "--adalora_tfinal", "2", "--adalora_delta_t", "1", "--learning_rate", "0.05",
            "--output_dir", str(tmp_path / "out")]
    _ok(_launch(args, 2, dump=tmp_path / "dump"))
    d0, d1 = _dumps(tmp_path / "dump")
    assert d0["rank_pattern"] == d1["rank_pattern"] and not all(all(v) for v in d0["rank_pattern"].values())
    assert all(torch.equal(d0["params"][n], d1["params"][n]) for n in d0["params"])
    assert all(torch.equal(d0["ivon"][n][k], d1["ivon"][n][k]) for n in d0["ivon"] for k in ("momentum", "hess"))
    assert json.loads((tmp_path / "out" / "rank_pattern.json").read_text()) == d0["rank_pattern"]


def test_adalora_adamw_two_processes_match_one(data, tmp_path):
    common = ["--model_name_or_path", str(data["model_nodrop"]), "--task_name", "rte", "--glue_dir",
              str(data["glue41"]), "--seed", "3", "--num_train_epochs", "3", "--gradient_accumulation_steps", "2",
              "--eval_steps", "3", "--eval_after_epochs", "0", "--apply_lora", "--lora_type", "adalora",
              "--adalora_init_r", "3", "--adalora_target_r", "2", "--adalora_tinit", "1", "--adalora_tfinal", "2",
              "--adalora_delta_t", "1", "--learning_rate", "0.01"]
    one, two = tmp_path / "one", tmp_path / "two"
    _ok(_launch(common + ["--per_device_train_batch_size", "8", "--output_dir", str(one)], 1, dump=tmp_path / "d1"))
    _ok(_launch(common + ["--per_device_train_batch_size", "4", "--output_dir", str(two)], 2, dump=tmp_path / "d2"))
    (s,), (r0, r1) = _dumps(tmp_path / "d1", 1), _dumps(tmp_path / "d2")
    assert all(torch.equal(r0["params"][n], r1["params"][n]) for n in r0["params"])  # DDP: one model
    assert s["params"].keys() == r0["params"].keys()
    for n in s["params"]:
        torch.testing.assert_close(r0["params"][n], s["params"][n], atol=1e-5, rtol=0)
    assert s["rank_pattern"] == r0["rank_pattern"] == r1["rank_pattern"]
    assert not all(all(v) for v in s["rank_pattern"].values())
    assert _without_runtime(read_results(two)) == _without_runtime(read_results(one))
    log1, log2 = read_log(one), read_log(two)
    assert len(log1) == len(log2) and log1[-1]["step"] == 9  # 6 batches of 8 (the last of 1) -> 3 updates/epoch
    for a, b in zip(log1, log2):
        assert a.keys() == b.keys()
        for k in a:
            if "loss" in k:
                assert b[k] == pytest.approx(a[k], abs=1e-5)
            else:
                assert b[k] == a[k], k
    assert all(r["n_eval"] == N_DEV for r in log2 if "n_eval" in r)


def _stopped_together(ranks: list[subprocess.CompletedProcess], status: int, message: str) -> None:
    """Every process exits with `status` on its own, rank 0 says why in its last line, and no process aborts or
    prints a traceback on its way out (each ends the process group before exiting)."""
    assert [r.returncode for r in ranks] == [status] * len(ranks), [r.stderr[-2000:] for r in ranks]
    assert message in ranks[0].stderr.strip().splitlines()[-1]
    assert all("error" not in r.stderr for r in ranks[1:])
    assert not any(word in r.stderr for r in ranks for word in ("Traceback", "terminate called"))


LEAVE_PROBE = Path(__file__).parent / "_leave_probe.py"
PROC = Path("/proc/self/task")  # where the probe counts threads (Linux); elsewhere the count is not checked


def _left_alone(ranks: list[subprocess.CompletedProcess]) -> None:
    """Run with LEAVE_PROBE: each process ended the process group once, and that ended it, gloo's threads and
    all. Had the model still held the group, its threads would be joined later, when the model is freed, with
    the GIL held: a process could then hang on its way out (a flaky hang of the non-finite-loss test)."""
    if not PROC.is_dir():
        return
    for r in ranks:
        assert r.stdout.splitlines().count("gloo threads after leaving: 0") == 1, r.stdout[-500:]


def test_bad_input_stops_every_process_with_status_2(data, tmp_path):
    out = tmp_path / "out"
    # passes the flag checks, fails once the processes are connected (the step plan needs the data size)
    args = ["--model_name_or_path", str(data["model"]), "--task_name", "rte", "--glue_dir", str(data["glue"]),
            "--output_dir", str(out), "--apply_lora", "--lora_type", "adalora", "--max_train_steps", "4",
            "--adalora_tinit", "3", "--adalora_tfinal", "2"]
    ranks = spawn_ranks(args, 2)
    _stopped_together(ranks, 2, "AdaLoRA schedule impossible")  # reported once, no abort at exit
    rank0 = ranks[0]
    # the rule and its message are peft's (validate_schedule), reached through the script's check_budget_schedule
    assert rank0.stderr.strip().splitlines()[-1] == (
        "run_glue_no_trainer.py: error: AdaLoRA schedule impossible (--adalora_tinit/--adalora_tfinal/"
        "--adalora_delta_t): no budgeting phase: tinit=3 must be < total_step - max(tfinal, 1) = 4 - 2 = 2; "
        "lower tinit/tfinal or train for more steps")
    assert not out.exists()


def test_a_run_that_hangs_fails_with_its_stacks():
    """The launch helpers' timeout: a process that never ends is aborted and the test fails with its Python stack
    (faulthandler), so that a hung 2-process run in CI says where it waited."""
    proc = subprocess.Popen([sys.executable, "-c", "import time\ntime.sleep(600)"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env=process_env())
    with pytest.raises(pytest.fail.Exception) as failed:
        finish_processes([proc], timeout=3)
    assert "did not end within 3 s" in str(failed.value)
    assert 'File "<string>", line 2 in <module>' in str(failed.value)  # where it was: time.sleep(600)
    assert proc.returncode == -signal.SIGABRT


def test_a_nonfinite_loss_stops_every_process_with_status_1(data, tmp_path):
    args = ["--model_name_or_path", str(data["model"]), "--task_name", "rte", "--glue_dir", str(data["glue"]),
            "--output_dir", str(tmp_path / "out"), "--per_device_train_batch_size", "4", "--max_train_steps", "4",
            "--learning_rate", "1e30"]
    ranks = spawn_ranks(args, 2, script=LEAVE_PROBE)
    _stopped_together(ranks, 1, "non-finite training loss")
    _left_alone(ranks)
    assert not (tmp_path / "out" / "all_results.json").exists()


@pytest.mark.skipif(not PROC.is_dir(), reason="the probe counts threads in /proc (Linux)")
def test_a_finished_run_leaves_a_process_group_nothing_else_holds(data, tmp_path):
    args = ["--model_name_or_path", str(data["model"]), "--task_name", "rte", "--glue_dir", str(data["glue"]),
            "--output_dir", str(tmp_path / "out"), "--per_device_train_batch_size", "4", "--max_train_steps", "2"]
    ranks = spawn_ranks(args, 2, script=LEAVE_PROBE)
    assert [r.returncode for r in ranks] == [0, 0], [r.stderr[-2000:] for r in ranks]
    _left_alone(ranks)
    assert (tmp_path / "out" / "all_results.json").exists()


def test_outputs_the_main_process_cannot_write_stop_every_process_with_status_2(data, tmp_path):
    """The outputs are written at the end by the main process alone; a full disk there (each process may write no
    file over 60 kB, the tiny model's weights take ~110 kB) stops the others too, once, with status 2."""
    import resource

    out = tmp_path / "out"
    args = ["--model_name_or_path", str(data["model"]), "--task_name", "rte", "--glue_dir", str(data["glue"]),
            "--output_dir", str(out), "--per_device_train_batch_size", "4", "--max_train_steps", "2"]
    ranks = spawn_ranks(args, 2, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000)),
                        script=LEAVE_PROBE)
    _stopped_together(ranks, 2, f"cannot write the outputs in {out}")
    _left_alone(ranks)
    assert not (out / "all_results.json").exists()
