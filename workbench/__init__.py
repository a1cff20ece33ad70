"""workbench: understand, steer and ship edits to a language model's activations."""

__version__ = "0.1.0"
