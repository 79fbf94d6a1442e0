"""Dataset loading for jaxpet: MNIST, CIFAR-10, AT&T faces and UTKFace as numpy arrays.

Sources are tried in order:

1. a local folder (``data_dir`` or ``$JAXPET_DATA_DIR``) holding the files in the
   layouts of the public releases (see ``../shared/data/README.md``); archives are
   read member by member into memory, never extracted;
2. for MNIST and CIFAR-10 only, TensorFlow Datasets through ``tfds.data_source``
   (array_record, works without TensorFlow); imported lazily, so this package
   imports on machines without ``tensorflow_datasets``; with no network it fails
   in seconds;
3. otherwise a :class:`DataError` that lists the files expected and where.

Decoded arrays are cached as ``.npz`` files (never pickles) keyed by the dataset
name and a fingerprint of the source, so a second load takes well under a
second. Every loaded :class:`Dataset` has a content digest (:attr:`Dataset.digest`,
also ``info["digest"]``), computed once at decode time and kept in the cache, so
saved work can be keyed on the data actually loaded. Every bad input raises
:class:`DataError` whose message states the problem and how to fix it.

Exact example counts are checked against :data:`EXPECTED_COUNTS`.

Modules, by concept: :mod:`~jaxpet.data.containers` (Split, Dataset, DataError),
:mod:`~jaxpet.data.normalization`, :mod:`~jaxpet.data.images` (decoding, resizing),
:mod:`~jaxpet.data.archives` (safe tar/zip/folder reading), :mod:`~jaxpet.data.sources`,
:mod:`~jaxpet.data.cache`, :mod:`~jaxpet.data.counts`, one module per source
(:mod:`~jaxpet.data.mnist`, :mod:`~jaxpet.data.cifar10`, :mod:`~jaxpet.data.att_faces`,
:mod:`~jaxpet.data.utkface`, :mod:`~jaxpet.data.tfds`) and :mod:`~jaxpet.data.loading`.
"""

from jaxpet.data.att_faces import ATT_FACES_SHAPE
from jaxpet.data.cifar10 import CIFAR10_CLASSES
from jaxpet.data.containers import DataError, Dataset, Split
from jaxpet.data.counts import BALANCED_DATASETS, EXPECTED_COUNTS
from jaxpet.data.images import resize_images
from jaxpet.data.loading import DATASETS, default_cache_dir, default_data_dir, load_dataset
from jaxpet.data.mnist import MNIST_CLASSES
from jaxpet.data.normalization import IDENTITY, NORMALIZATION, Normalize, normalizer
from jaxpet.data.utkface import UTKFACE_GENDERS, UTKFACE_RACES, parse_utkface_name

__all__ = [
    "ATT_FACES_SHAPE", "BALANCED_DATASETS", "CIFAR10_CLASSES", "DATASETS", "DataError",
    "Dataset", "EXPECTED_COUNTS", "IDENTITY", "MNIST_CLASSES", "NORMALIZATION", "Normalize",
    "Split", "UTKFACE_GENDERS", "UTKFACE_RACES", "default_cache_dir", "default_data_dir",
    "load_dataset", "normalizer", "parse_utkface_name", "resize_images",
]
