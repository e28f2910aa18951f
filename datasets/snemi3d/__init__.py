"""SNEMI3D crops TFDS builder; importing registers it."""
from . import snemi3d_dataset_builder
