"""Configs, trainer and command-line entry points."""
