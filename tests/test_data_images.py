"""Tests for numpy_moe.data_images: the digits split and the CIFAR-10 binary-batch reader.

The CIFAR-10 tests write small batch files in the exact binary format (per record one label byte, then
1024 red, 1024 green and 1024 blue pixel bytes) and check that every byte comes back where it belongs.
"""
import numpy as np
import pytest

from numpy_moe.data_images import (CIFAR_TEST_FILE, CIFAR_TRAIN_FILES, load_cifar10, load_digits_images,
                                   read_cifar10_batch)


def test_digits_shapes_split_and_standardisation():
    X_train, X_test, y_train, y_test = load_digits_images(seed=0, test_size=0.25)
    assert X_train.shape[1:] == X_test.shape[1:] == (1, 8, 8)
    assert len(X_train) == len(y_train) and len(X_test) == len(y_test)
    assert len(y_train) + len(y_test) == 1797 and len(y_test) == round(0.25 * 1797)
    assert X_train.dtype == np.float64 and y_train.dtype == np.int64
    assert set(np.unique(y_train)) == set(range(10))
    assert abs(X_train.mean()) < 1e-12 and abs(X_train.std() - 1) < 1e-12  # scaled by training pixels only
    assert abs(X_test.mean()) > 1e-6  # the test set does not inform the scaling


def test_digits_images_are_the_sklearn_images():
    from sklearn.datasets import load_digits

    X_train, X_test, y_train, y_test = load_digits_images(seed=1)
    raw = load_digits()
    # Recompute the split independently and undo the scaling with the training pixels' statistics.
    X_all = np.concatenate([X_train, X_test])
    y_all = np.concatenate([y_train, y_test])
    order = np.random.default_rng(1).permutation(1797)
    test, train = order[:len(y_test)], order[len(y_test):]
    np.testing.assert_array_equal(y_all, np.concatenate([raw.target[train], raw.target[test]]))
    m, s = raw.images[train].mean(), raw.images[train].std()
    np.testing.assert_allclose(X_all[:, 0] * s + m, raw.images[np.concatenate([train, test])], atol=1e-12)


def test_digits_seeded_split():
    a, b, c = (load_digits_images(seed=s) for s in (3, 3, 4))
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[2], c[2])
    Xg = load_digits_images(seed=np.random.default_rng(3))[0]
    np.testing.assert_array_equal(Xg, a[0])  # a Generator seeded alike gives the same split


@pytest.mark.parametrize("test_size", [0, 1, -0.1, 1.5])
def test_digits_bad_test_size(test_size):
    with pytest.raises(ValueError, match=f"test_size={test_size}"):
        load_digits_images(test_size=test_size)


def write_batch(path, images, labels):
    """Write records in the CIFAR-10 binary layout: label byte, then 3072 pixel bytes (R, G, B planes)."""
    records = np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(len(labels), -1)], axis=1)
    records.astype(np.uint8).tofile(path)


@pytest.fixture
def cifar_folder(tmp_path):
    """Six batch files of 2-4 random images each; returns (folder, per-file (images, labels))."""
    rng = np.random.default_rng(0)
    written = {}
    for i, name in enumerate(CIFAR_TRAIN_FILES + (CIFAR_TEST_FILE,)):
        n = 2 + i % 3
        images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n)
        write_batch(tmp_path / name, images, labels)
        written[name] = images, labels
    return tmp_path, written


def test_cifar_reads_every_byte_in_place(cifar_folder):
    folder, written = cifar_folder
    X_train, X_test, y_train, y_test = load_cifar10(folder)
    np.testing.assert_array_equal(X_train, np.concatenate([written[n][0] for n in CIFAR_TRAIN_FILES]))
    np.testing.assert_array_equal(y_train, np.concatenate([written[n][1] for n in CIFAR_TRAIN_FILES]))
    np.testing.assert_array_equal(X_test, written[CIFAR_TEST_FILE][0])
    np.testing.assert_array_equal(y_test, written[CIFAR_TEST_FILE][1])
    assert X_train.dtype == np.uint8 and X_train.shape[1:] == (3, 32, 32) and y_train.dtype == np.int64


def test_cifar_record_layout_by_hand(tmp_path):
    # One record: label 7, red plane all 1 except pixel (row 0, col 1) = 200, green 2, blue 3.
    record = np.concatenate([[7], np.full(1024, 1), np.full(1024, 2), np.full(1024, 3)]).astype(np.uint8)
    record[1 + 1] = 200  # byte 0 is the label; red pixel (0, 1) is the second red byte
    record.tofile(tmp_path / "one.bin")
    images, labels = read_cifar10_batch(tmp_path / "one.bin")
    assert labels.tolist() == [7]
    assert images[0, 0, 0, 1] == 200 and images[0, 0, 0, 0] == 1 and images[0, 0, 1, 1] == 1
    assert (images[0, 1] == 2).all() and (images[0, 2] == 3).all()


def test_cifar_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_cifar10(tmp_path / "nope")


def test_cifar_missing_file(cifar_folder):
    folder, _ = cifar_folder
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(FileNotFoundError, match="lacks data_batch_3.bin"):
        load_cifar10(folder)


def test_cifar_parent_folder_hint(cifar_folder):
    folder, _ = cifar_folder
    parent = folder.parent / (folder.name + "_parent")
    parent.mkdir()
    folder.rename(parent / "cifar-10-batches-bin")
    with pytest.raises(FileNotFoundError, match="subfolder cifar-10-batches-bin"):
        load_cifar10(parent)


def test_cifar_truncated_file(cifar_folder):
    folder, _ = cifar_folder
    path = folder / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="data_batch_2.bin has .* bytes.*truncated"):
        load_cifar10(folder)


def test_cifar_empty_file(cifar_folder):
    folder, _ = cifar_folder
    (folder / CIFAR_TEST_FILE).write_bytes(b"")
    with pytest.raises(ValueError, match="test_batch.bin has 0 bytes"):
        load_cifar10(folder)


def test_cifar_bad_label(cifar_folder):
    folder, _ = cifar_folder
    path = folder / "data_batch_1.bin"
    raw = bytearray(path.read_bytes())
    raw[3073] = 10  # label byte of the second record
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="record 1 has label byte 10"):
        load_cifar10(folder)


def test_images_experiment_runs_on_cifar_batches(tmp_path):
    # The experiment's --cifar path end to end on small batch files in the real format (quick mode).
    from experiments.__main__ import run

    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar"
    folder.mkdir()
    for name in CIFAR_TRAIN_FILES + (CIFAR_TEST_FILE,):
        write_batch(folder / name, rng.integers(0, 256, size=(16, 3, 32, 32), dtype=np.uint8),
                    rng.integers(0, 10, size=16))
    run("images", ["--quick", "--out", str(tmp_path), "--cifar", str(folder)])
    assert (tmp_path / "images_cifar10.png").is_file() and (tmp_path / "images_digits.png").is_file()
