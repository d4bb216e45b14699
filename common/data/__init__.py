"""Data: robust image I/O, the bundled demo set, training sources/mixing and test folders."""

from common.data.bundled import bundled_photos, write_bundled_dataset
from common.data.io import BadImageError, ImageTooLarge, read_image, to_tensor, to_uint8, write_image
from common.data.sources import ImageSource, list_source, write_manifest
from common.data.test_sets import PairedFolder, PairingError, pair_files
from common.data.train_sets import HRTrainDataset, collate_train

__all__ = [
    "BadImageError",
    "ImageTooLarge",
    "read_image",
    "write_image",
    "to_tensor",
    "to_uint8",
    "ImageSource",
    "list_source",
    "write_manifest",
    "HRTrainDataset",
    "collate_train",
    "PairedFolder",
    "PairingError",
    "pair_files",
    "bundled_photos",
    "write_bundled_dataset",
]
