"""The sample FSDP and DeepSpeed files the README points at (issue 28 item 12): read by accelerate's own launch
code, the way `prefpilot train --launcher accelerate --fsdp/--deepspeed` hands them over."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_fsdp_sample_is_an_accelerate_config_that_shards_fully():
    """accelerate turns the file into FSDP_* variables for each process; the plugin built from them is FSDP2
    with full sharding and transformer-layer wrapping. Run in a child so the variables stay there."""
    code = f"""
import os
from accelerate.commands.launch import launch_command_parser, _validate_launch_command
from accelerate.utils.launch import prepare_multi_gpu_env
from prefpilot.train.launch import accelerate_argv
argv = accelerate_argv("c.yaml", "run", num_processes=8, fsdp={str(ROOT / 'examples/accel_fsdp.yaml')!r}, cpu=False)
args = launch_command_parser().parse_args(argv[argv.index("accelerate.commands.launch") + 1:])
args = _validate_launch_command(args)[0]
os.environ.update({{k: v for k, v in prepare_multi_gpu_env(args).items() if k.startswith(("FSDP", "ACCELERATE_"))}})
from accelerate.utils import FullyShardedDataParallelPlugin
p = FullyShardedDataParallelPlugin()
print(p.fsdp_version, p.reshard_after_forward, p.auto_wrap_policy.__name__, p.state_dict_type.name,
      os.environ["ACCELERATE_MIXED_PRECISION"], args.num_processes)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    version, reshard, wrap, state_dict, precision, procs = r.stdout.split()
    assert (version, reshard, wrap, state_dict) == ("2", "True", "transformer_auto_wrap_policy", "SHARDED_STATE_DICT")
    assert precision == "no" and procs == "8"  # precision is the run config's; --num-processes wins over the file


def test_the_deepspeed_sample_is_zero3_with_autos_filled_from_the_run():
    from accelerate.utils import DeepSpeedPlugin
    path = ROOT / "examples" / "ds_zero3.json"
    cfg = json.loads(path.read_text())
    plugin = DeepSpeedPlugin(hf_ds_config=str(path))
    assert plugin.zero_stage == 3
    # every 'auto' is one transformers' DeepSpeed integration fills from TrainingArguments
    autos = {k for k, v in cfg.items() if v == "auto"} | {f"zero_optimization.{k}" for k, v in
                                                          cfg["zero_optimization"].items() if v == "auto"}
    assert autos and {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"} <= autos
    # (transformers' own fill-in, HfTrainerDeepSpeedConfig, needs the deepspeed package: not installed here)
