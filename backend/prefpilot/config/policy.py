"""What a config may reach: the network, secrets, and local paths. Light (no torch).

The CLI trusts its user and only warns; the MCP server enforces (see workspace.py): an agent's config
cannot push to the Hub, report to a remote tracker, carry a token, or point a path-valued key outside
the workspace unless the server was started to allow it.
"""
from __future__ import annotations

# Keys whose value may be a local file or folder. tests/test_security.py walks the generated schemas and
# fails on any key that says it takes a path but is in neither list below.
PATH_KEYS = ("dataset_path", "dataset_name", "model_name_or_path", "tokenizer_name_or_path", "output_dir",
             "resume_from_checkpoint", "deepspeed", "fsdp_config", "accelerator_config")
ALWAYS_LOCAL = ("output_dir", "resume_from_checkpoint", "deepspeed", "fsdp_config", "accelerator_config")
NOT_PATHS = {
    "dataset_config": "a dataset configuration name (load_dataset's `name`)",
    "fsdp": "FSDP options such as 'full_shard auto_wrap'",
    "liger_kernel_config": "keyword arguments for Liger kernels",
    "parallelism_config": "an Accelerate ParallelismConfig object",
    "restore_callback_states_from_checkpoint": "a boolean",
    "enable_jit_checkpoint": "a boolean",
    "pad_token": "a token string",
}

# Options that make the trainer talk to the outside world.
LOCAL_REPORTERS = {"none", "tensorboard"}


def network_options(cfg: dict) -> list[str]:
    """The keys of ``cfg`` that would reach the network (Hub pushes, remote trackers)."""
    out = []
    for k, v in cfg.items():
        if k == "push_to_hub" and v:
            out.append(k)
        elif (k.startswith("hub_") or k.startswith("trackio_")) and v not in (None, False, ""):
            out.append(k)
        elif k == "report_to":
            values = v if isinstance(v, list) else [v]
            if any(str(x).lower() not in LOCAL_REPORTERS for x in values if x is not None):
                out.append(k)
    return out


def secret_keys(cfg: dict) -> list[str]:
    return [k for k, v in cfg.items() if k.endswith("_token") and k != "pad_token" and v not in (None, "")]


# Where a secret goes instead of the run folder: the trainer's environment.
SECRET_ENV = {"hub_token": "HF_TOKEN"}


def split_secrets(cfg: dict) -> tuple[dict, dict]:
    """(the config without secrets, environment variables that carry them to the trainer)."""
    clean, env = dict(cfg), {}
    for k in secret_keys(cfg):
        value = clean.pop(k)
        if k in SECRET_ENV and isinstance(value, str):
            env[SECRET_ENV[k]] = value
    return clean, env


def redacted(cfg: dict) -> dict:
    """A copy safe to show or store: secret values replaced."""
    return {k: ("<redacted>" if k in secret_keys(cfg) else v) for k, v in cfg.items()}
