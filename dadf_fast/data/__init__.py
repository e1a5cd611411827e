"""Datasets and image loading: MVTec AD, MVTec LOCO AD, a folder of images, and the
synthetic texture data of the demo (:mod:`dadf_fast.data.synthetic`)."""
from dadf_fast.data.datasets import (
    IMAGE_EXTENSIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetError,
    FolderDataset,
    ImageReadError,
    MissingFolderError,
    MVTecAD,
    MVTecLOCO,
    SkippedImageWarning,
    collate,
    denormalize,
    flip_augment,
    list_categories,
    list_images,
    load_rgb,
    normalize,
)

__all__ = ["MVTecAD", "MVTecLOCO", "FolderDataset", "DatasetError", "MissingFolderError", "ImageReadError",
           "SkippedImageWarning", "IMAGE_EXTENSIONS", "IMAGENET_MEAN", "IMAGENET_STD", "collate", "denormalize",
           "flip_augment", "list_categories", "list_images", "load_rgb", "normalize"]
