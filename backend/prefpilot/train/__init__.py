"""The training path: the only part of prefpilot that imports torch, transformers, trl, peft."""
