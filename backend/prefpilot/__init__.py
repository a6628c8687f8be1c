"""prefpilot: plan, validate, run and diagnose DPO/SimPO preference optimisation.

The names exported here are light (no torch import); training lives in
``prefpilot.train`` and is imported only when a run starts.
"""
__version__ = "0.2.0"


def validate(config):
    """Validate a run config mapping; see ``prefpilot.config.validate``."""
    from .config.validate import validate as _validate
    return _validate(config)


def plan(**kwargs):
    """Plan a run config from the skills' hyperparameter tables; see ``prefpilot.plan``."""
    from .plan import plan as _plan
    return _plan(**kwargs)


def diagnose(history, **kwargs):
    """Findings for a run's metrics (run dir, file, pasted text or list of dicts); see ``prefpilot.diagnosis``."""
    from .diagnosis import diagnose as _diagnose
    return _diagnose(history, **kwargs)


__all__ = ["validate", "plan", "diagnose", "__version__"]
