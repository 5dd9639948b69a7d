"""Data: sample types per modality, sources, splits, built-in datasets, and transforms from the model's
preprocessing."""

from .builtin import BUILTIN_DATASETS, load_builtin
from .images import AUGMENTATIONS, IMAGE_EXTENSIONS, ImageDataset, build_transforms, open_image
from .samples import ImageSamples, Samples, SplitData, TextSamples
from .sources import ImageData, load_eval_data, load_training_data

__all__ = ["AUGMENTATIONS", "BUILTIN_DATASETS", "IMAGE_EXTENSIONS", "ImageData", "ImageDataset", "ImageSamples",
           "Samples", "SplitData", "TextSamples", "build_transforms", "load_builtin", "load_eval_data",
           "load_training_data", "open_image"]
