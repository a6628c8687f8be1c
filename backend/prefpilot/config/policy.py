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

# Keys whose value is a token string of the tokenizer, not a credential.
TOKENIZER_TOKENS = {"pad_token", "eos_token", "bos_token", "unk_token", "sep_token", "cls_token", "mask_token"}
# Below the top level (model_init_kwargs, deepspeed, fsdp_config, ...) a key is a path by its name.
NESTED_PATH_SUFFIXES = ("_dir", "_path", "_file", "_folder", "name_or_path")


def walk(cfg: dict):
    """Every (owning dict, key, dotted name, depth) in ``cfg``, nested dicts and lists of dicts included.

    TRL and transformers read keys at any depth (``model_init_kwargs`` goes to ``from_pretrained`` for the
    policy and the reference model), so each policy below looks at all of them, not the top level only.
    Iterative: a deep object from an agent cannot exhaust the recursion limit."""
    stack = [(cfg, "", 0)]
    while stack:
        node, prefix, depth = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in items:
            name = f"{prefix}.{k}" if prefix and isinstance(node, dict) else (f"{prefix}[{k}]" if prefix else str(k))
            if isinstance(node, dict):
                yield node, k, name, depth
            if isinstance(v, (dict, list)):
                stack.append((v, name, depth + 1))


def _reaches_network(key: str, v) -> bool:
    if key == "push_to_hub":
        return bool(v)
    if key.startswith(("hub_", "trackio_")):
        return v not in (None, False, "")
    if key == "report_to":
        values = v if isinstance(v, list) else [v]
        return any(str(x).lower() not in LOCAL_REPORTERS for x in values if x is not None)
    return False


def network_options(cfg: dict) -> list[str]:
    """The keys of ``cfg``, at any depth, that would reach the network (Hub pushes, remote trackers)."""
    return [name for d, k, name, _ in walk(cfg) if isinstance(k, str) and _reaches_network(k, d[k])]


def is_secret_key(key) -> bool:
    k = str(key).lower()
    return (k in ("token", "api_key", "password") or k.endswith(("_token", "_api_key", "_password"))) \
        and k not in TOKENIZER_TOKENS


def secret_keys(cfg: dict) -> list[str]:
    """Dotted names of the keys, at any depth, that hold a credential (``hub_token``, ``model_init_kwargs.token``)."""
    return [name for d, k, name, _ in walk(cfg) if is_secret_key(k) and d[k] not in (None, "", False)]


def remote_code_keys(cfg: dict) -> list[str]:
    """Dotted names of every ``trust_remote_code`` set to a true value, at any depth."""
    return [name for d, k, name, _ in walk(cfg) if k == "trust_remote_code" and d[k]]


def nested_path_keys(cfg: dict):
    """(owning dict, key, dotted name) of path-valued string keys below the top level, by their names."""
    for d, k, name, depth in walk(cfg):
        if depth and isinstance(k, str) and isinstance(d[k], str) and d[k] \
                and (k in PATH_KEYS or k.endswith(NESTED_PATH_SUFFIXES)):
            yield d, k, name


def deep_copy(cfg):
    """A copy that can be changed at any depth without touching the caller's object (JSON/YAML shapes only)."""
    if isinstance(cfg, dict):
        return {k: deep_copy(v) for k, v in cfg.items()}
    if isinstance(cfg, list):
        return [deep_copy(v) for v in cfg]
    return cfg


# Where a secret goes instead of the run folder: the trainer's environment. huggingface_hub reads HF_TOKEN
# for every download, so a token given to from_pretrained still reaches it.
SECRET_ENV = {"hub_token": "HF_TOKEN", "token": "HF_TOKEN", "use_auth_token": "HF_TOKEN"}


def split_secrets(cfg: dict) -> tuple[dict, dict]:
    """(the config without secrets at any depth, environment variables that carry them to the trainer)."""
    clean, env = deep_copy(cfg), {}
    for d, k, _, _ in list(walk(clean)):
        if is_secret_key(k) and d[k] not in (None, "", False):
            value = d.pop(k)
            if SECRET_ENV.get(str(k).lower()) and isinstance(value, str):
                env[SECRET_ENV[str(k).lower()]] = value
    return clean, env


def redacted(cfg: dict) -> dict:
    """A copy safe to show or store: secret values replaced, at any depth."""
    out = deep_copy(cfg)
    for d, k, _, _ in list(walk(out)):
        if is_secret_key(k) and d[k] not in (None, "", False):
            d[k] = "<redacted>"
    return out
