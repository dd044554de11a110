"""Image datasets for the image models (MATH.md §7): scikit-learn's 8x8 digits and CIFAR-10.

An edge module (it imports NumPy and returns NumPy arrays; the models move them to the backend).

- :func:`load_digits_images`: ``sklearn.datasets.load_digits`` (1797 grey 8x8 images, 10 classes, ships
  with scikit-learn) as (N, 1, 8, 8) float images, split at random and standardised with the training
  pixels' mean and standard deviation.
- :func:`load_cifar10`: CIFAR-10 (Krizhevsky 2009) from the "binary version" batches
  ``data_batch_1.bin`` ... ``data_batch_5.bin`` and ``test_batch.bin`` in a folder the user names. Each
  file is a sequence of 3073-byte records: one label byte (0-9), then 3072 pixel bytes, the 1024 red, 1024
  green and 1024 blue values of a 32x32 image in row-major order. The files are read as raw bytes with
  ``numpy.fromfile``; nothing is ever unpickled and nothing is downloaded.
"""
from pathlib import Path

import numpy

from .backend import default_rng, is_floating_dtype
from .validation import check_real

CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch.bin"
CIFAR_RECORD_BYTES = 1 + 3 * 32 * 32


def load_digits_images(seed=0, test_size=0.25, dtype="float64"):
    """The 8x8 digits as standardised NCHW images with a random train/test split.

    Parameters
    ----------
    seed : int or numpy Generator for the split. test_size : fraction of samples in the test set, in (0, 1).
    dtype : float dtype of the images.

    Returns
    -------
    X_train : (N_train, 1, 8, 8), X_test : (N_test, 1, 8, 8), y_train : (N_train,) int, y_test : (N_test,) int.
    Pixels (0-16 in the raw data) become (x - m) / s with m, s the mean and standard deviation of all
    training pixels, so the test set never informs the scaling.
    """
    from sklearn.datasets import load_digits

    check_real(test_size, "test_size", 0, 1, low_open=True, high_open=True)  # "a": a TypeError from '<'
    if not is_floating_dtype(dtype):  # "int64" gave float64 images, "complex128" complex ones
        raise TypeError(f"dtype={dtype!r} must be a float dtype (float32 or float64)")
    rng = default_rng(seed)  # the house check: numpy's took True and [1, 2] as seeds
    digits = load_digits()
    X = digits.images[:, None].astype(dtype)  # (1797, 1, 8, 8)
    y = digits.target.astype(numpy.int64)
    order = rng.permutation(len(y))
    n_test = max(1, round(test_size * len(y)))
    test, train = order[:n_test], order[n_test:]
    m, s = X[train].mean(), X[train].std()
    return (X[train] - m) / s, (X[test] - m) / s, y[train], y[test]


def read_cifar10_batch(path):
    """One CIFAR-10 binary batch file as (images (n, 3, 32, 32) uint8, labels (n,) int64).

    Raises ValueError when the file size is not a positive multiple of the 3073-byte record or a label
    byte is not in 0-9 (the file is truncated or not a CIFAR-10 binary batch).
    """
    path = Path(path)
    raw = numpy.fromfile(path, dtype=numpy.uint8)
    if raw.size == 0 or raw.size % CIFAR_RECORD_BYTES:
        raise ValueError(f"{path} has {raw.size} bytes; a CIFAR-10 binary batch holds a positive multiple of "
                         f"{CIFAR_RECORD_BYTES} bytes (1 label byte + 3072 pixel bytes per image): "
                         "the file is truncated or not a CIFAR-10 binary batch")
    records = raw.reshape(-1, CIFAR_RECORD_BYTES)  # (n, 3073)
    labels = records[:, 0].astype(numpy.int64)
    bad = numpy.flatnonzero(labels > 9)
    if bad.size:
        raise ValueError(f"{path} record {int(bad[0])} has label byte {int(labels[bad[0]])}; CIFAR-10 labels "
                         "are 0-9: the file is not a CIFAR-10 binary batch")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def load_cifar10(folder):
    """CIFAR-10 from the binary batches in ``folder``.

    Parameters
    ----------
    folder : path of the folder holding data_batch_1.bin ... data_batch_5.bin and test_batch.bin
        (``cifar-10-batches-bin`` once ``cifar-10-binary.tar.gz`` is extracted).

    Returns
    -------
    X_train : (N_train, 3, 32, 32) uint8, X_test : (N_test, 3, 32, 32) uint8, y_train : (N_train,) int64,
    y_test : (N_test,) int64; training batches concatenated in order 1-5 (50000 and 10000 images for the
    real data set). Pixels stay raw bytes: scaling them is the caller's choice.

    Raises
    ------
    FileNotFoundError when the folder or one of the six files is missing; ValueError for a truncated or
    malformed file (see :func:`read_cifar10_batch`).
    """
    folder = Path(folder)
    names = CIFAR_TRAIN_FILES + (CIFAR_TEST_FILE,)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder={str(folder)!r} is not a directory; expected the folder holding the "
                                f"CIFAR-10 binary batches {', '.join(names)}")
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        hint = (f" (it has a subfolder cifar-10-batches-bin: pass {str(folder / 'cifar-10-batches-bin')!r})"
                if (folder / "cifar-10-batches-bin").is_dir() else "")
        raise FileNotFoundError(f"folder={str(folder)!r} lacks {', '.join(missing)}; expected the CIFAR-10 "
                                f"binary batches {', '.join(names)}{hint}")
    train = [read_cifar10_batch(folder / name) for name in CIFAR_TRAIN_FILES]
    X_test, y_test = read_cifar10_batch(folder / CIFAR_TEST_FILE)
    X_train = numpy.concatenate([x for x, _ in train])
    y_train = numpy.concatenate([y for _, y in train])
    return X_train, X_test, y_train, y_test
