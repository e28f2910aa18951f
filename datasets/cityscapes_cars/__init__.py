"""Cityscapes classes + car instances TFDS builder; importing registers it."""
from . import cityscapes_cars_dataset_builder
