"""Confine the paths an agent passes to the roots the server was started with.

Pure logic, used by the MCP server (the CLI trusts its user). A path is resolved
(symlinks followed, ``..`` collapsed, relative to the workspace) and must land inside
one of the roots; hub ids such as ``trl-lib/ultrafeedback_binarized`` are not paths.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .config.policy import (ALWAYS_LOCAL, PATH_KEYS, deep_copy, nested_path_keys, network_options,
                            remote_code_keys, secret_keys)
from .errors import PrefpilotError


@dataclass
class Workspace:
    root: Path
    runs_root: Path
    allow_remote_code: bool = False
    extra_roots: list[Path] = field(default_factory=list)
    allow_network: bool = False
    max_concurrent_runs: int = 1
    max_wall_time: float | None = None  # default lease (seconds) for runs launched over MCP

    @classmethod
    def create(cls, root=None, runs_root=None, allow_remote_code=False, allow_network=False,
               max_concurrent_runs: int | None = None, max_wall_time: float | None = None) -> "Workspace":
        ws = Path(root or ".").expanduser().resolve()
        runs = Path(runs_root).expanduser() if runs_root else ws / "runs"
        runs = (runs if runs.is_absolute() else ws / runs).resolve()
        if max_concurrent_runs is None:  # one training per GPU; one on a CPU-only machine
            from .config.hardware import local_hardware
            max_concurrent_runs = max(1, local_hardware()["num_gpus"] or 1)
        return cls(ws, runs, allow_remote_code, allow_network=allow_network, max_concurrent_runs=max_concurrent_runs,
                   max_wall_time=max_wall_time)

    @property
    def roots(self) -> list[Path]:
        return [self.root, self.runs_root, *self.extra_roots]

    def confine(self, value, what: str) -> Path:
        """The resolved path, or an error that says which argument escaped and where it may point."""
        if not isinstance(value, str) or not value.strip() or "\x00" in value:
            raise PrefpilotError(f"{what}: expected a path (a non-empty string)", code="bad_path")
        p = Path(value).expanduser()
        real = (p if p.is_absolute() else self.root / p).resolve()
        if not any(real == r or r in real.parents for r in self.roots):
            raise PrefpilotError(f"{what} {value!r} resolves to {real}, outside the workspace ({self.root}"
                                 f"{'' if self.runs_root.is_relative_to(self.root) else ', ' + str(self.runs_root)}"
                                 "): pass a path inside it, or start the server with --workspace",
                                 code="path_outside_workspace")
        return real

    def _is_local(self, value: str, key: str) -> bool:
        if key in ALWAYS_LOCAL:
            return True
        if value.startswith("builtin:"):
            return False
        p = Path(value).expanduser()
        return (p.is_absolute() or value.startswith((".", "~")) or ".." in p.parts
                or (self.root / p).exists() or p.suffix in (".jsonl", ".json", ".csv", ".parquet", ".tsv"))

    def confine_config(self, config: dict) -> dict:
        """A copy of ``config`` with local paths made absolute inside the workspace; refuses escapes and remote code."""
        if not isinstance(config, dict):
            raise PrefpilotError("config must be a mapping of TRL/prefpilot keys", code="not_a_mapping")
        cfg = deep_copy(config)  # nested keys are rewritten below: never the caller's object
        remote = remote_code_keys(cfg)
        if remote and not self.allow_remote_code:
            raise PrefpilotError(f"{', '.join(remote)}: refused — this server runs no code shipped with a model. "
                                 "Remove the key, or restart the server with --allow-remote-code",
                                 code="remote_code_refused")
        secrets = secret_keys(cfg)
        if secrets:
            raise PrefpilotError(f"{', '.join(secrets)}: refused — a secret in an agent's config would be stored and "
                                 "echoed back. Set HF_TOKEN in the server's environment instead", code="secret_refused")
        net = network_options(cfg)
        if net and not self.allow_network:
            raise PrefpilotError(f"{', '.join(net)}: refused — this server does not let a run reach the network (Hub "
                                 "pushes, remote trackers). Remove them (report_to: none or tensorboard), or restart "
                                 "the server with --allow-network", code="network_refused")
        for key in PATH_KEYS:
            v = cfg.get(key)
            if isinstance(v, str) and v and self._is_local(v, key):
                cfg[key] = str(self.confine(v, key))
        for d, key, name in list(nested_path_keys(cfg)):  # cache_dir, offload_folder, nvme_path, ...
            if key not in PATH_KEYS or self._is_local(d[key], key):
                d[key] = str(self.confine(d[key], name))
        return cfg

    def confine_model(self, model: str) -> str:
        """A model argument: a hub id stays as it is, a local folder must be inside the workspace."""
        return str(self.confine(model, "model")) if self._is_local(model, "model_name_or_path") else model
