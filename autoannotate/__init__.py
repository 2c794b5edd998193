"""autoannotate: a folder of images in, a trainable YOLO instance-segmentation dataset out."""

from __future__ import annotations

__version__ = "0.1.0"
