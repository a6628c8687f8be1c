"""Turn a validated run config into a real TRL run: DPOTrainer for DPO, TRL's CPO trainer in SimPO mode,
TRL's experimental ORPOTrainer for ORPO, KTOTrainer for KTO.

Everything heavy is imported inside functions so `prefpilot train --help` stays fast.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import traceback
from pathlib import Path

import yaml

from .. import rundir
from ..config.policy import split_secrets
from ..rundir import last_checkpoint
from ..config.estimate import estimate_memory
from ..config.normalize import PREFPILOT_KEYS
from ..config.validate import schema, validate
from ..errors import PrefpilotError
from .stop import STOP

log = logging.getLogger("prefpilot.train")


# ----------------------------------------------------------------------------- config → TRL kwargs
def split_config(cfg: dict) -> dict[str, dict]:
    """Partition a normalised config by the TRL class each key belongs to (from the generated schema)."""
    sources = schema(cfg["method"])["x-field-sources"]
    parts = {"trainer": {}, "model": {}, "data": {}, "prefpilot": {}}
    for k, v in cfg.items():
        src = sources.get(k, "prefpilot")
        if k in PREFPILOT_KEYS or src in ("prefpilot", "SimPO paper"):
            parts["prefpilot"][k] = v
        elif src == "ModelConfig":
            parts["model"][k] = v
        elif src in ("ScriptArguments", "DatasetMixtureConfig"):
            parts["data"][k] = v
        else:
            parts["trainer"][k] = v
    return parts


def hardware_defaults(cfg: dict, report: dict) -> tuple[dict, list[str]]:
    """Fill precision and gradient checkpointing from the hardware when the config leaves them unset."""
    import torch
    chosen, notes = {}, []
    cuda = torch.cuda.is_available()
    if "bf16" not in cfg and "fp16" not in cfg:
        if cuda and torch.cuda.is_bf16_supported():
            chosen.update(bf16=True)
            notes.append("bf16: the GPU supports it")
        elif cuda:
            chosen.update(bf16=False, fp16=True)
            notes.append("fp16: the GPU has no bf16")
        else:
            chosen.update(bf16=False)
            notes.append("fp32: no GPU (TRL's bf16 default would be emulated on the CPU)")
    if not cuda and "use_cpu" not in cfg:
        chosen["use_cpu"] = True
    if "gradient_checkpointing" not in cfg and "activation_checkpointing" not in cfg:
        est = estimate_memory({**cfg, **chosen, "activation_checkpointing": False}, report["hardware"])
        cap = est.get("device_memory_gb")
        need = bool(est.get("known") and cap and est["total_gb"] > 0.85 * cap)
        chosen["activation_checkpointing"] = need  # transformers 5's name for gradient_checkpointing
        notes.append(f"activation checkpointing {'on' if need else 'off'}: estimate without it "
                     f"{est.get('total_gb', 'unknown')} GB vs {cap} GB available")
    chosen.setdefault("logging_steps", cfg.get("logging_steps", 1))
    chosen.setdefault("report_to", cfg.get("report_to", "none"))
    return chosen, notes


# ----------------------------------------------------------------------------- SimPO hinge
def simpo_trainer_class():
    from trl.experimental.cpo import CPOTrainer

    class SimPOTrainer(CPOTrainer):
        """CPOTrainer in SimPO mode; adds the SimPO repository's hinge variant using TRL's own hinge branch.

        relu(1 − (β·Δavg − γ)) is TRL's hinge relu(1 − β·(c − r)) with the rejected score shifted by γ/β.
        The log-probs stay averaged because loss_type remains "simpo" during the forward.
        """

        simpo_loss = "sigmoid"

        def cpo_loss(self, chosen_logps, rejected_logps):
            if self.simpo_loss != "hinge":
                return super().cpo_loss(chosen_logps, rejected_logps)
            self.loss_type = "hinge"
            try:
                losses, _, _ = super().cpo_loss(chosen_logps, rejected_logps + self.simpo_gamma / self.beta)
            finally:
                self.loss_type = "simpo"
            _, chosen_rewards, rejected_rewards = super().cpo_loss(chosen_logps, rejected_logps)
            return losses, chosen_rewards, rejected_rewards

    return SimPOTrainer


# ----------------------------------------------------------------------------- the run
def cached_ref_logps(cfg: dict, targs: dict, model_path: str, model_kwargs: dict, rows: list):
    """(chosen, rejected) reference log-probs of every training row from datacheck's cache, or None.

    Only where the cached values are what TRL's precompute would give: float32 weights without bf16/fp16
    autocast, the policy's own starting weights as the reference (no ref_model, no adapter folder), TRL's
    default keep_start truncation and no LD-DPO weighting (ld_alpha changes the reference sum)."""
    import torch
    from ..datacheck import refcache
    if not targs.get("precompute_ref_log_probs") or targs.get("bf16") or targs.get("fp16"):
        return None
    if model_kwargs.get("dtype") not in (torch.float32, None) or cfg.get("ref_model") or cfg.get("ld_alpha"):
        return None
    if targs.get("truncation_mode", "keep_start") != "keep_start" or (Path(model_path) / "adapter_config.json").exists():
        return None
    max_length = targs.get("max_length", 1024)  # DPOConfig's default
    return refcache.lookup(refcache.fingerprint(model_path, max_length), rows)


def cached_ref_dpo_trainer_class():
    from trl import DPOTrainer

    class CachedRefDPOTrainer(DPOTrainer):
        """DPOTrainer that keeps reference log-probs already in a dataset (TRL's collator and loss read the
        `ref_chosen_logps`/`ref_rejected_logps` columns) instead of computing them again; any dataset without
        them (an eval split) goes through TRL's own precompute."""

        def _precompute_ref_logps(self, dataset, name, batch_size):
            if "ref_chosen_logps" in dataset.column_names:
                return dataset
            return super()._precompute_ref_logps(dataset, name, batch_size)

    return CachedRefDPOTrainer


def _setup_logging(run_dir: Path, main_process: bool, log_file: bool = True) -> None:
    if not main_process:
        return
    # The run manager already points this process's stderr at train.log: a second handler would double lines.
    handler = logging.FileHandler(run_dir / "train.log") if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("prefpilot", "transformers", "trl", "peft", "accelerate"):
        logging.getLogger(name).addHandler(handler)
    logging.getLogger("prefpilot").setLevel(logging.INFO)


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _nothing_left(config: dict, run_dir: Path, done: dict) -> bool:
    """A completed run with its final model, resumed with a config that asks for no more steps than it ran (a
    larger max_steps or more epochs is a real continuation)."""
    if not any((run_dir / "final" / f).is_file() for f in ("config.json", "adapter_config.json")):
        return False
    steps = config.get("max_steps")
    if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0:
        return isinstance(done.get("step"), int) and done["step"] >= steps
    from ..config.load import safe_yaml
    try:
        saved = safe_yaml((run_dir / "config.yaml").read_text(encoding="utf-8"), str(run_dir / "config.yaml"))
    except (OSError, PrefpilotError):
        return False
    return isinstance(saved, dict) and config.get("num_train_epochs", 3) == saved.get("num_train_epochs", 3)


def train(config: dict, run_dir: str | Path, *, resume: bool = False, max_bad_rows: int = 0,
          progress: bool | None = None, callbacks: list | None = None, log_file: bool = True) -> dict:
    """Validate, check data, load the model, train, save. Returns the final status dict."""
    run_dir = Path(run_dir)
    main = _is_main()
    done = rundir.read_status(run_dir) if resume else {}
    if done.get("state") == "completed" and _nothing_left(config, run_dir, done):
        # Slurm re-runs a batch job that is requeued after it finished (a node failure at its end, an admin's
        # requeue): training again would overwrite the saved model and its evaluation, so it only says so
        if main:
            print(f"prefpilot: {run_dir.name} already completed at step {done.get('step')}; nothing to resume "
                  "(a job requeued after the run finished)", file=sys.stderr, flush=True)
        return done
    if not resume and ((run_dir / "metrics.jsonl").exists() or rundir.last_checkpoint(run_dir) is not None):
        raise PrefpilotError(f"{run_dir} already holds a run's metrics or checkpoints: pass --resume to continue it, "
                             "or choose another --run-dir (training on would mix two runs' steps)",
                             code="run_dir_not_empty")
    run_dir.mkdir(parents=True, exist_ok=True)
    report = validate(config, local=True)  # it trains here: memory must fit
    if not report["valid"]:
        msg = "; ".join(f"{e['path']}: {e['message']}" for e in report["errors"])
        if main:
            rundir.update_status(run_dir, state="failed", error=f"invalid config: {msg}")
        raise PrefpilotError(f"invalid config (nothing was loaded): {msg}", code="invalid_config")
    # Secrets at any depth (hub_token, model_init_kwargs.token) leave the config before TRL sees it, so they
    # reach neither config.yaml nor training_args.bin; huggingface_hub reads them from the environment.
    cfg, secret_env = split_secrets(dict(report["normalized"]))
    os.environ.update(secret_env)
    _setup_logging(run_dir, main, log_file)
    try:
        # Data first: a bad row must never cost a model load.
        from .data import load_splits
        train_rows, eval_rows, data_report = load_splits(cfg, max_bad_rows)
        if eval_rows is None:  # no test split: set pairs aside for `prefpilot eval`, never trained on
            from .data import holdout_split
            train_rows, held = holdout_split(train_rows, cfg.get("eval_holdout", "auto"), int(cfg.get("seed", 42)))
            data_report["trained"] = len(train_rows)
            if held:
                data_report["held_out"] = len(held)
                if main:
                    (run_dir / "eval").mkdir(exist_ok=True)
                    with open(run_dir / "eval" / "holdout.jsonl", "w", encoding="utf-8") as fh:
                        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in held)
                    log.info("set aside %d held-out pairs for `prefpilot eval` (eval_holdout)", len(held))
        if data_report["dropped"] and main:
            log.warning("dropped %d bad rows (allowed by --max-bad-rows)", data_report["dropped"])
        chosen, notes = hardware_defaults(cfg, report)
        cfg.update({k: v for k, v in chosen.items() if k not in cfg})
        if main:
            if not resume or not (run_dir / "config.yaml").exists():
                # secrets (hub_token) stay out of the run folder; a resume reads them from HF_TOKEN
                (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False),
                                                     encoding="utf-8")
            rundir.update_status(run_dir, state="running", error=None, started_at=rundir.now(), method=cfg["method"],
                                 hardware_choices=notes, data=data_report, pid=os.getpid())
            for n in notes:
                log.info("chosen: %s", n)
        allowance = max(0, max_bad_rows - data_report["dropped"])  # --max-bad-rows covers both kinds of bad row
        return _train(cfg, run_dir, train_rows, eval_rows, resume, progress, main, callbacks or [], allowance)
    except PrefpilotError as exc:
        if main:
            rundir.update_status(run_dir, state="failed", error=str(exc))
        raise
    except KeyboardInterrupt:
        if main:
            rundir.update_status(run_dir, state="cancelled", error="interrupted")
        raise
    except Exception as exc:  # anything TRL/torch raises becomes a failed status with its message
        if STOP["signalled"]:
            # A cancel that interrupted an import leaves a half-initialised module, and the next import of it
            # raises: that error is the cancel's doing, not the run's.
            if main:
                rundir.update_status(run_dir, state="cancelled", error="cancelled by request during start-up")
            raise KeyboardInterrupt from exc
        if main:
            log.error("training failed:\n%s", traceback.format_exc())
            rundir.update_status(run_dir, state="failed", error=f"{type(exc).__name__}: {exc}")
        raise


def _train(cfg, run_dir, train_rows, eval_rows, resume, progress, main, extra_callbacks, max_bad_rows=0):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import ModelConfig, get_peft_config, get_quantization_config

    from .callbacks import RunRecorder
    from .models import resolve_model

    parts = split_config(cfg)
    model_path, model_source = resolve_model(cfg["model_name_or_path"])
    if main:
        log.info("model %s from %s", cfg["model_name_or_path"], model_source)
    model_args = ModelConfig(**parts["model"])
    quant = get_quantization_config(model_args)
    dtype = parts["model"].get("dtype", "float32")
    if dtype == "auto":
        dtype = "float32" if not torch.cuda.is_available() else "auto"
    model_kwargs = {"dtype": getattr(torch, dtype) if dtype != "auto" else "auto",
                    "trust_remote_code": bool(cfg.get("trust_remote_code"))}
    if model_args.attn_implementation:
        model_kwargs["attn_implementation"] = model_args.attn_implementation
    if quant is not None:
        model_kwargs["quantization_config"] = quant
    # The tokenizer first: a data problem it reveals must not cost a model load.
    tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=model_kwargs["trust_remote_code"])
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if cfg["method"] in ("simpo", "orpo", "cpo"):  # they cut the completion, never the prompt (TRL's old tokenizer)
        from .data import drop_overlong_simpo_prompts
        n_before, max_len = len(train_rows), cfg.get("max_length") or 1024  # CPOConfig's and ORPOConfig's default
        train_rows = drop_overlong_simpo_prompts(train_rows, tok, max_len, "training data", max_bad_rows)
        if eval_rows:
            eval_rows = drop_overlong_simpo_prompts(eval_rows, tok, max_len, "test split", max_bad_rows)
        if len(train_rows) < n_before and main:
            log.warning("dropped %d rows whose prompt fills max_length (allowed by --max-bad-rows)",
                        n_before - len(train_rows))

    model = AutoModelForCausalLM.from_pretrained(model_path, **model_kwargs)
    peft_config = get_peft_config(model_args)
    targs = dict(parts["trainer"])
    targs.update(output_dir=str(run_dir / "checkpoints"), logging_nan_inf_filter=False,  # let NaN reach the log
                 disable_tqdm=not (progress if progress is not None else sys.stderr.isatty()))
    trainer_eval_rows = eval_rows  # the live evaluation below scores pairs: KTO's unpaired copy is TRL's only
    if cfg["method"] == "kto":  # KTO reads unpaired rows: each pair becomes its desirable and undesirable row
        from ..datacheck.layouts import kto_rows
        train_rows, pairs = kto_rows(train_rows)
        if eval_rows:
            trainer_eval_rows = kto_rows(eval_rows)[0]
        if main and pairs:
            log.info("KTO: %d preference pairs unpaired into %d desirable + %d undesirable rows (interleaved, so "
                     "each sequential batch holds both labels)", pairs, pairs, pairs)
            rundir.update_status(run_dir, kto_unpaired_pairs=pairs)
    if eval_rows is None or targs.get("eval_strategy", "no") == "no":
        eval_ds = None
    else:
        eval_ds = Dataset.from_list(trainer_eval_rows)
    train_ds = Dataset.from_list(train_rows)
    ck = last_checkpoint(run_dir) if resume else None
    if ck is not None and main:
        dropped = rundir.truncate_metrics(run_dir, rundir.checkpoint_step(ck))
        log.info("resuming from %s (dropped %d metric rows logged after it)", ck.name, dropped)
    recorder = RunRecorder(run_dir, config=cfg)
    if ck is not None:
        recorder.rows = rundir.read_metrics(run_dir)  # the live diagnosis judges the whole run, not the tail
    from ..evaluation import live
    if live.settings(cfg):  # evaluation during training: the test split, else the pairs set aside at launch
        from .data import read_rows
        held = run_dir / "eval" / "holdout.jsonl"
        rows = eval_rows or (read_rows(str(held)) if held.is_file() else [])
        extra_callbacks = [*extra_callbacks, live.LiveEval(run_dir, rows, tok, cfg, recorder.record)]

    if cfg["method"] == "dpo":
        from trl import DPOConfig, DPOTrainer
        cls = DPOTrainer
        cached = cached_ref_logps(cfg, targs, model_path, model_kwargs, train_rows)
        if cached is not None:  # `prefpilot data check --score` scored these pairs with this model already
            train_ds = Dataset.from_list([{**r, "ref_chosen_logps": c, "ref_rejected_logps": rj}
                                          for r, c, rj in zip(train_rows, *cached)])
            cls = cached_ref_dpo_trainer_class()
            if main:
                log.info("reference log-probs of the %d training pairs reused from `prefpilot data check --score`'s "
                         "cache: TRL's precompute pass over them is skipped", len(train_rows))
                rundir.update_status(run_dir, ref_logps_reused=len(train_rows))
        trainer = cls(model=model, args=DPOConfig(**targs), train_dataset=train_ds, eval_dataset=eval_ds,
                      processing_class=tok, peft_config=peft_config, callbacks=[recorder, *extra_callbacks])
    elif cfg["method"] == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
        trainer = ORPOTrainer(model=model, args=ORPOConfig(**targs), train_dataset=train_ds, eval_dataset=eval_ds,
                              processing_class=tok, peft_config=peft_config, callbacks=[recorder, *extra_callbacks])
    elif cfg["method"] == "cpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer
        trainer = CPOTrainer(model=model, args=CPOConfig(**targs), train_dataset=train_ds, eval_dataset=eval_ds,
                             processing_class=tok, peft_config=peft_config, callbacks=[recorder, *extra_callbacks])
    elif cfg["method"] == "kto":
        from trl import KTOConfig, KTOTrainer
        trainer = KTOTrainer(model=model, args=KTOConfig(**targs), train_dataset=train_ds, eval_dataset=eval_ds,
                             processing_class=tok, peft_config=peft_config, callbacks=[recorder, *extra_callbacks])
    else:
        from trl.experimental.cpo import CPOConfig
        cls = simpo_trainer_class()
        trainer = cls(model=model, args=CPOConfig(**targs), train_dataset=train_ds, eval_dataset=eval_ds,
                      processing_class=tok, peft_config=peft_config, callbacks=[recorder, *extra_callbacks])
        trainer.simpo_loss = cfg.get("simpo_loss", "sigmoid")
    if trainer.args.world_size > 1:  # every process says where it runs: the job's log shows who took part
        print(f"prefpilot: process rank {trainer.args.process_index} of world size {trainer.args.world_size} on "
              f"node {os.environ.get('SLURMD_NODENAME') or socket.gethostname()}", file=sys.stderr, flush=True)
    t0 = time.time()
    trainer.train(resume_from_checkpoint=str(ck) if ck else None)
    if recorder.stopped_by is not None:
        f = recorder.stopped_by
        ck = last_checkpoint(run_dir)
        msg = (f"stopped by the live diagnosis at step {f['step']}: {f['id']} ({f['severity']}). {f['explanation']} "
               f"`prefpilot diagnose {run_dir}` lists the remedies.")
        if main:
            rundir.update_status(run_dir, state="failed", error=msg, failed_step=f["step"], finished_at=rundir.now(),
                                 checkpoint=str(ck) if ck else None)
        raise PrefpilotError(msg, code="stopped_by_diagnosis")
    if recorder.lease_spent and not STOP["requested"]:
        ck = last_checkpoint(run_dir)
        if main:
            log.info("max_wall_time of %g s spent at step %d; checkpoint %s kept", recorder.lease_s,
                     trainer.state.global_step, ck)
            return rundir.update_status(run_dir, state="cancelled", finished_at=rundir.now(),
                                        step=trainer.state.global_step, checkpoint=str(ck) if ck else None,
                                        error=f"max_wall_time of {recorder.lease_s:g} s spent: stopped with a "
                                              "checkpoint; `prefpilot runs resume RUN --max-wall-time S` continues "
                                              "it with a total lease of S seconds")
        return {}
    if STOP["requested"]:
        ck = last_checkpoint(run_dir)
        if main:
            log.info("cancelled at step %d; checkpoint %s kept", trainer.state.global_step, ck)
            return rundir.update_status(run_dir, state="cancelled", error="cancelled by request",
                                        step=trainer.state.global_step, finished_at=rundir.now(),
                                        checkpoint=str(ck) if ck else None)
        return {}
    trainer.save_model(str(run_dir / "final"))  # Trainer saves the tokenizer (its processing_class) with it
    if main:
        # checkpoint/stopped_by of an earlier cancel or stop would read as something left to resume
        status = rundir.update_status(run_dir, state="completed", checkpoint=None, step=trainer.state.global_step,
                                      total_steps=trainer.state.max_steps, percent=100.0, eta_seconds=0,
                                      finished_at=rundir.now(), train_seconds=round(time.time() - t0, 2),
                                      final_model=str(run_dir / "final"))
        return status
    return {}
