"""Synthetic lesions: generator (`generator.py`) and TFDS builder."""
