"""Data sets (TFDS builders), the input pipeline and on-device augmentation."""
