"""Datasets and image loading: MVTec AD (:mod:`.mvtec`), MVTec LOCO AD (:mod:`.loco`), a plain
folder dataset (:mod:`.folder`), image files (:mod:`.images`), model input tensors
(:mod:`.transforms`) and the synthetic texture data of the demo (:mod:`.synthetic`).

Every dataset is a :class:`torch.utils.data.Dataset` whose items are dicts:

==========  ==============================  =============================================
key         value                           meaning
==========  ==============================  =============================================
``image``   float32 ``[3, H, W]``           RGB, resized to ``image_size`` (bilinear),
                                            ImageNet-normalised
``mask``    float32 ``[1, H, W]`` in {0,1}  ground truth (union of all masks for LOCO),
                                            resized with nearest neighbour; zeros for
                                            good images and for unknown labels
``label``   int                             0 good, 1 anomalous, -1 unknown (folder
                                            dataset without a mask directory)
``defect``  str                             ``"good"``, the defect folder name, ...
``path``    str                             the image file
==========  ==============================  =============================================

:class:`MVTecLOCO` items add ``masks`` (float32 ``[K, H, W]``, one channel per ground
truth file, ``K = 0`` for good images) and ``saturation`` (float32 ``[K]``, sPRO
saturation areas in pixels of the resized mask: the official area of the full-size mask,
``min(t, area)`` or ``int(t * area)``, times the pixel-count ratio, capped at the resized
region's area). ``K`` varies between images, so batch LOCO test items with
:func:`collate` (it keeps those two keys as lists).

``H, W`` is ``image_size`` (an int ``S`` gives ``S x S``; the model's input size).
``dataset.ground_truth(i)`` gives item ``i``'s ground truth at the image's original size,
unresized (what the official evaluation compares maps with).

Pixel values: 8-bit images are used as they are; samples of more than 8 bits keep their
top 8 bits, by the file's range (16-bit: 65535 -> 255) or by ``bit_depth`` (e.g. 12);
float images must hold [0, 1]. See :func:`load_rgb`.

Error policy, so that a bad file fails fast with its name rather than half-way
through training:

* a missing folder raises :class:`MissingFolderError` (both a ``FileNotFoundError`` and
  a ``ValueError``); any other layout problem (empty train set, mask without an image,
  anomalous image without a mask, unknown category) raises :class:`DatasetError`
  (a ``ValueError``) naming the file or folder.
* construction only lists files, except with ``skip_unreadable=True`` (the default for
  test and validation splits): then every image (and mask) is decoded once up front;
  an unreadable one triggers a :class:`SkippedImageWarning` naming it, is dropped, and
  its path is recorded in ``dataset.skipped``.
* an image that cannot be decoded at load time raises :class:`ImageReadError` naming it.
  Call :meth:`validate` before a long training run to find all such files at once.
"""
from dadf_fast.data.base import collate, list_categories
from dadf_fast.data.errors import DatasetError, ImageReadError, MissingFolderError, SkippedImageWarning
from dadf_fast.data.folder import FolderDataset
from dadf_fast.data.images import IMAGE_EXTENSIONS, expand_image_paths, list_images, load_rgb
from dadf_fast.data.loco import MVTecLOCO
from dadf_fast.data.mvtec import MVTecAD
from dadf_fast.data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize, flip_augment, load_image, normalize

__all__ = ["MVTecAD", "MVTecLOCO", "FolderDataset", "DatasetError", "MissingFolderError", "ImageReadError",
           "SkippedImageWarning", "IMAGE_EXTENSIONS", "IMAGENET_MEAN", "IMAGENET_STD", "collate", "denormalize",
           "expand_image_paths", "flip_augment", "list_categories", "list_images", "load_image", "load_rgb", "normalize"]
