"""What a run leaves in its output folder besides checkpoints: the log, run_config.json, and at the end the
adapter (or model) and tokenizer, IVON's state, the rank pattern and all_results.json, written last; the Hub
upload of them; and the debug dump the multi-process tests compare.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from peft.rank_pattern import masks_by_module
from safetensors import SafetensorError

from .checkpoints import TrainState
from .errors import UsageError
from .files import write_atomic, write_json
from .ivon_files import ivon_state_by_name
from .manifest import made_dirs, record


class JsonlLog:
    """Appends one JSON object per line to OUT/log.jsonl (flushed, so a killed run keeps what it logged).

    Only the main process writes (`enabled`); the others count lines too, so that every process holds the
    same TrainState.
    """

    def __init__(self, path: Path, state: TrainState, enabled: bool = True):
        self.path, self.state, self.enabled = path, state, enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        self.state.log_lines += 1


def _save_pretrained_atomic(obj, out: Path) -> None:
    """save_pretrained into a temp folder in `out`, then move each file into place with os.replace; everything
    is recorded in the manifest first."""
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".tmp_save_"))
    try:
        record(out, add=[tmp.name])
        try:
            obj.save_pretrained(tmp)
        except SafetensorError as e:  # safetensors' own report of a failed write (a full disk)
            raise OSError(str(e)) from None
        files = [f.relative_to(tmp) for f in sorted(tmp.rglob("*")) if f.is_file()]
        record(out, add=[d for f in files for d in made_dirs(out, f)] + [f.as_posix() for f in files])
        for rel in files:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp / rel, 0o644)
            os.replace(tmp / rel, out / rel)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    record(out, drop=[tmp.name])


def save_outputs(run, state: TrainState) -> dict:
    """Write the trained model/adapter, tokenizer, IVON state, rank pattern, and all_results.json last."""
    out, model, args = run.out, run.peft_model, run.args
    names = ["all_results.json"]
    if not args.eval_only and run.ivon is not None:
        names.append("ivon_state.pt")
    if not args.eval_only and run.adaptive:
        names.append("rank_pattern.json")
    record(out, add=names)
    if not args.eval_only:
        if run.ivon is not None:  # before save_pretrained: the pattern still matches the unresized tensors
            write_atomic(out / "ivon_state.pt", {"ess": run.ivon.param_groups[0].get("ess"),
                                                 "weight_decay": run.ivon.param_groups[0].get("weight_decay"),
                                                 "params": ivon_state_by_name(run)})
        _save_pretrained_atomic(model, out)
        _save_pretrained_atomic(run.tokenizer, out)
        if run.adaptive:
            write_json(out / "rank_pattern.json", final_rank_pattern(run))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    results = dict(state.last_eval)
    results |= {f"best_{k}": v for k, v in state.best_eval.items()}
    cfg = getattr(model, "peft_config", {}).get("default")
    results |= {"best_step": state.best_step, "task_name": args.task_name, "seed": state.seed,
                "train_steps": state.completed_steps, "train_runtime_s": round(state.train_runtime_s, 3),
                "trainable_params": trainable, "lora_type": run.kind, "use_ivon": run.ivon is not None,
                "criterion": cfg.importance_criterion if cfg is not None else None}
    if run.adaptive:
        results["kept_ranks"] = int(sum(model.base_model.kept_ranks().values()))
    write_json(out / "all_results.json", results)
    return results


def final_rank_pattern(run) -> dict[str, list[bool]]:
    """The final rank pattern, ``{"<module path>.lora_E": [bool] * init_r}``; all triplets kept for modules the
    allocator never masked."""
    model = run.peft_model
    masks = masks_by_module(model.peft_config["default"].rank_pattern)
    init_r = model.peft_config["default"].init_r
    for name, _ in model.named_parameters():
        if ".lora_E." in name:
            masks.setdefault(name.split(".lora_E.")[0].removeprefix("base_model.model."), [True] * init_r)
    return dict(sorted((f"{module}.lora_E", mask) for module, mask in masks.items()))


def machine() -> dict:
    """What a run's times were measured on: host name, CPU model, logical CPUs, torch's intra-op threads, and the
    kernel's boot id (two runs with the same boot id ran on the same machine, without a restart between them;
    None where the system does not say)."""
    def first_line(path: str, prefix: str = "") -> str | None:
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(prefix):
                        return line.split(":", 1)[1].strip() if prefix else line.strip()
        except OSError:
            pass
        return None

    return {"node": platform.node() or None,
            "cpu": first_line("/proc/cpuinfo", "model name") or platform.processor() or None,
            "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "boot_id": first_line("/proc/sys/kernel/random/boot_id")}


def run_config(recorded: dict, seed: int) -> dict:
    """Resolved args (`Resolved.recorded_args`), seed, package versions, git commit, the machine and start time
    for run_config.json."""
    versions = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "ivon", "accelerate", "datasets", "evaluate"):
        try:
            from importlib.metadata import version
            versions[pkg] = version(pkg)
        except Exception:
            versions[pkg] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent.parent,
                                capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"args": recorded, "seed": seed, "versions": versions, "git_commit": commit, "machine": machine(),
            "start_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def hub_repository(args: argparse.Namespace) -> str | None:
    """With --push_to_hub: log in and create the repository now, before training, so that a missing login, a
    bad token or no network is one line up front rather than an error after hours of training. Returns the
    repository id (None without --push_to_hub)."""
    if not args.push_to_hub:
        return None
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE",
                                                                                 "TRANSFORMERS_OFFLINE")):
        raise UsageError("--push_to_hub needs the Hub, but HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set; unset it "
                         "or drop --push_to_hub")
    from huggingface_hub import HfApi
    api = HfApi(token=args.hub_token)
    try:
        user = api.whoami()["name"]
        repo = args.hub_model_id or f"{user}/{Path(args.output_dir).resolve().name}"
        api.create_repo(repo, exist_ok=True)
    except Exception as e:  # no login, a bad token, no network, no permission: all stop the run here
        first = (str(e).splitlines() or [""])[0][:200]
        raise UsageError(f"--push_to_hub: cannot log in to the Hub or create the repository ({type(e).__name__}: "
                         f"{first}); check --hub_token (or `hf auth login`), --hub_model_id and the network") from None
    return repo


def push_outputs(args: argparse.Namespace, repo: str, out: Path) -> None:
    """Upload the finished run's outputs to `repo` (checkpoints, locks and hidden temp files stay local)."""
    from huggingface_hub import HfApi
    HfApi(token=args.hub_token).upload_folder(repo_id=repo, folder_path=str(out), commit_message="End of training",
                                              ignore_patterns=["checkpoints/**", ".*", "**/.*"])


def debug_dump(run, state: TrainState, folder: Path) -> None:
    """Write this process's final state to folder/rank<r>.pt (tests compare processes; RUN_GLUE_DEBUG_DUMP_DIR):
    trainable weights, rank pattern, IVON momentum/Hessian/step, last eval, n_eval and the torch RNG state."""
    model = run.peft_model
    dump = {"params": {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad},
            "rank_pattern": final_rank_pattern(run) if run.adaptive else None,
            "last_eval": state.last_eval, "n_eval": run.n_eval, "completed_steps": state.completed_steps,
            "torch_rng": torch.get_rng_state()}
    if run.ivon is not None:
        dump["ivon"] = {n: {k: v.detach().cpu().clone() for k, v in run.ivon.param_state(p).items()}
                        for n, p in model.named_parameters() if p.requires_grad}
        dump["ivon_step"] = run.ivon.current_step
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / f"rank{run.accelerator.process_index}.pt", dump)
