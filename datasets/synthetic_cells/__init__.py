"""Synthetic cells: generator (`generator.py`) and TFDS builder."""
