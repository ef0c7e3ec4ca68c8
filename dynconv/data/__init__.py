"""Input data: synthetic dataset, ImageFolder scanning, FFCV files, loaders and batch transforms."""
from .augment import AugmentParams, BatchTransform, default_stats
from .folder import FolderIndex, scan_image_folder
from .loaders import DataSource, build_source

__all__ = ["AugmentParams", "BatchTransform", "DataSource", "FolderIndex", "build_source",
           "default_stats", "scan_image_folder"]
