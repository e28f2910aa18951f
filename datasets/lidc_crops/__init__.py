"""LIDC-IDRI crops (HPU-Net release) TFDS builder; importing registers it."""
from . import lidc_crops_dataset_builder
