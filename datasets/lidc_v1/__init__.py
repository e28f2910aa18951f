"""LIDC-IDRI 128x128 crops (LIDC v1) TFDS builder; importing registers it."""
from . import lidc_v1_dataset_builder
