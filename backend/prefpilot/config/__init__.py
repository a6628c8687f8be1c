"""The run-config layer: load, normalise, validate, estimate memory. Light: no torch."""
from .load import load_config, parse_config_text

__all__ = ["load_config", "parse_config_text", "validate"]


def validate(config):
    from .validate import validate as _validate
    return _validate(config)
