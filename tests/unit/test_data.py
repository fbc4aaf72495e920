"""The data layer: splits, normalisation, k-fold, the on-disk formats, caching, devices."""

import pickle
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_wine

from raytune_suite.training.data import (
    DATASETS,
    Arrays,
    DataSpec,
    dataset_cache_clear,
    load_arrays,
    load_dataset,
    to_device,
)
from formats import denormalise, write_cifar10, write_image_folder, write_mnist

WINE = load_wine().data


def sample_ids(arrays: Arrays, raw: np.ndarray) -> dict[str, np.ndarray]:
    """Which raw row each sample of each split is, by undoing the per-feature scaling.

    All splits together are the raw rows under one affine map per feature, so the map
    follows from the minimum and maximum of every feature.
    """
    parts = {"train": arrays.x_train, "val": arrays.x_val, "test": arrays.x_test}
    pooled = np.concatenate(list(parts.values())).astype(np.float64)
    scale = np.ptp(raw, axis=0) / np.ptp(pooled, axis=0)
    shift = raw.min(axis=0) - pooled.min(axis=0) * scale
    unit = raw.std(axis=0)
    ids = {}
    for part, x in parts.items():
        recovered = x * scale + shift
        distance = (((recovered[:, None] - raw[None]) / unit) ** 2).sum(axis=-1)
        ids[part] = distance.argmin(axis=1)
        assert distance.min(axis=1).max() < 1e-6  # every sample is exactly one raw row
    return ids


# --- splits -----------------------------------------------------------------------------


def test_splits_partition_the_data_with_the_requested_sizes():
    arrays = load_arrays(DataSpec("wine"))
    ids = sample_ids(arrays, WINE)
    # 178 samples: 20% test (36), then 20% of the remaining 142 for validation (29).
    assert [len(ids[p]) for p in ("train", "val", "test")] == [113, 29, 36]
    assert sorted(np.concatenate(list(ids.values()))) == list(range(178))
    assert arrays.num_classes == 3 and arrays.input_shape == (13,)
    assert arrays.class_names == ("class_0", "class_1", "class_2")
    # Stratified: every split has the classes in the proportions of the whole set.
    whole = np.bincount(load_wine().target) / 178
    for y in (arrays.y_train, arrays.y_val, arrays.y_test):
        assert np.abs(np.bincount(y) / len(y) - whole).max() < 0.05


def test_same_seed_same_split_other_seed_other_split():
    first = load_arrays(DataSpec("wine", data_seed=3))
    again = load_arrays(DataSpec("wine", data_seed=3))
    other = load_arrays(DataSpec("wine", data_seed=4))
    for part in ("x_train", "y_train", "x_val", "x_test"):
        np.testing.assert_array_equal(getattr(first, part), getattr(again, part))
    ids, other_ids = sample_ids(first, WINE), sample_ids(other, WINE)
    assert set(ids["val"]) != set(other_ids["val"])
    assert set(ids["test"]) != set(other_ids["test"])


def test_features_standardised_with_train_statistics_only():
    arrays = load_arrays(DataSpec("breast_cancer"))
    assert np.abs(arrays.x_train.mean(axis=0)).max() < 1e-5
    np.testing.assert_allclose(arrays.x_train.std(axis=0), 1, atol=1e-4)
    # Statistics over all data would centre val+test too; train statistics leave them off-centre.
    held_out = np.concatenate([arrays.x_val, arrays.x_test])
    assert np.abs(held_out.mean(axis=0)).max() > 0.05
    for x in (arrays.x_train, arrays.x_val, arrays.x_test):
        assert x.dtype == np.float32 and x.flags.c_contiguous
    assert arrays.y_train.dtype == np.int64


def test_digits_as_images_share_one_scale():
    features = load_arrays(DataSpec("digits"))
    images = load_arrays(DataSpec("digits", image=True))
    assert features.input_shape == (64,) and features.x_train.shape[1:] == (64,)
    assert images.input_shape == (1, 8, 8) and images.x_val.shape[1:] == (1, 8, 8)
    # Same split; one mean and std for all pixels keeps the picture's relative brightness.
    np.testing.assert_array_equal(features.y_train, images.y_train)
    assert abs(images.x_train.mean()) < 1e-5 and abs(images.x_train.std() - 1) < 1e-4
    corner = images.x_train[:, 0, 0, 0]  # always-black corner pixel: the darkest value
    assert np.allclose(corner, images.x_train.min())


def test_limit_keeps_the_first_training_samples_only():
    full, small = load_arrays(DataSpec("digits")), load_arrays(DataSpec("digits", limit=10))
    np.testing.assert_array_equal(small.x_train, full.x_train[:10])
    np.testing.assert_array_equal(small.y_train, full.y_train[:10])
    np.testing.assert_array_equal(small.x_val, full.x_val)
    np.testing.assert_array_equal(small.y_test, full.y_test)
    assert len(set(small.y_train.tolist())) > 3  # shuffled, not the first class only
    # Wine is sorted by class, and without a test split k-fold indices come sorted.
    sorted_pool = load_arrays(DataSpec("wine", folds=5, test_fraction=0, limit=12))
    assert len(set(sorted_pool.y_train.tolist())) > 1


# --- k-fold ----------------------------------------------------------------------------


def test_kfold_validation_folds_partition_the_pool_and_keep_the_test_split():
    plain_ids = sample_ids(load_arrays(DataSpec("wine")), WINE)
    folds = [load_arrays(DataSpec("wine", folds=5, fold=k)) for k in range(5)]
    fold_ids = [sample_ids(arrays, WINE) for arrays in folds]
    pool = set(range(178)) - set(plain_ids["test"])
    val_ids = np.concatenate([ids["val"] for ids in fold_ids])
    assert sorted(val_ids) == sorted(pool)  # each pool sample is validation exactly once
    for arrays, ids in zip(folds, fold_ids):
        np.testing.assert_array_equal(np.sort(ids["test"]), np.sort(plain_ids["test"]))
        assert set(ids["train"]) | set(ids["val"]) == pool
        assert not set(ids["train"]) & set(ids["val"])
        assert len(ids["val"]) in (28, 29)
        assert np.abs(arrays.x_train.mean(axis=0)).max() < 1e-5  # each fold on its own train


@pytest.mark.parametrize(("folds", "fold", "message"), [
    (1, 0, "folds must be 0 (off) or >= 2, got 1"),
    (5, 5, "fold must satisfy 0 <= fold < folds (5), got 5"),
    (5, -1, "fold must satisfy 0 <= fold < folds (5), got -1"),
    (0, 2, "fold needs folds >= 2"),
])
def test_kfold_rejects_impossible_folds(folds, fold, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DataSpec("wine", folds=folds, fold=fold)


def test_unknown_name_lists_every_data_set():
    with pytest.raises(ValueError) as err:
        DataSpec("cifar100")
    assert "'cifar100'" in str(err.value)
    assert all(name in str(err.value) for name in DATASETS)


def test_too_small_to_split_names_the_set_and_the_fractions():
    with pytest.raises(ValueError, match=r"synthetic: cannot split 12 samples of 10 classes"):
        load_arrays(DataSpec("synthetic", synthetic_samples=12, synthetic_shape=(4,)))


# --- synthetic --------------------------------------------------------------------------


def test_synthetic_has_the_requested_shape_and_is_deterministic():
    spec = DataSpec("synthetic", synthetic_samples=500, synthetic_shape=[3, 8, 8],
                    synthetic_classes=4, data_seed=1)
    assert spec.synthetic_shape == (3, 8, 8)  # a YAML list becomes a hashable tuple
    arrays = load_arrays(spec)
    assert arrays.input_shape == (3, 8, 8) and arrays.x_train.shape[1:] == (3, 8, 8)
    assert len(arrays.y_train) + len(arrays.y_val) + len(arrays.y_test) == 500
    assert arrays.x_train.dtype == np.float32 and arrays.y_train.dtype == np.int64
    assert arrays.num_classes == 4 and set(arrays.y_train.tolist()) == {0, 1, 2, 3}
    np.testing.assert_allclose(arrays.x_train.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_array_equal(load_arrays(spec).x_val, arrays.x_val)
    other = load_arrays(DataSpec("synthetic", synthetic_samples=500, synthetic_shape=(3, 8, 8),
                                 synthetic_classes=4, data_seed=2))
    assert not np.array_equal(other.x_train[:5], arrays.x_train[:5])


@pytest.fixture
def one_thread():
    """Tiny models only lose from threads, badly so on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("shape", [(16,), (3, 8, 8)])
def test_synthetic_is_learnable(shape, one_thread):
    data = load_dataset(DataSpec("synthetic", synthetic_samples=1500, synthetic_shape=shape,
                                 synthetic_classes=5))
    x_train, x_val = data.x_train.flatten(1), data.x_val.flatten(1)
    # Logistic regression, 100 full-batch gradient steps.
    weight = torch.zeros(x_train.shape[1], 5, requires_grad=True)
    bias = torch.zeros(5, requires_grad=True)
    for _ in range(100):
        loss = torch.nn.functional.cross_entropy(x_train @ weight + bias, data.y_train)
        grads = torch.autograd.grad(loss, (weight, bias))
        with torch.no_grad():
            weight -= 0.5 * grads[0]
            bias -= 0.5 * grads[1]
    with torch.no_grad():
        accuracy = ((x_val @ weight + bias).argmax(1) == data.y_val).float().mean().item()
    assert accuracy > 0.7  # chance is 0.2


# --- torchvision formats ---------------------------------------------------------------


def test_cifar10_release_format_round_trips(tmp_path):
    written = write_cifar10(tmp_path, n_train_per_batch=10, n_test=10, seed=0)
    arrays = load_arrays(DataSpec("cifar10", root=str(tmp_path)))
    assert arrays.x_train.shape == (40, 3, 32, 32) and arrays.x_val.shape == (10, 3, 32, 32)
    assert arrays.x_test.shape == (10, 3, 32, 32) and arrays.input_shape == (3, 32, 32)
    assert arrays.class_names[:3] == ("airplane", "automobile", "bird") and arrays.num_classes == 10
    np.testing.assert_allclose(arrays.x_train.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(arrays.x_train.std(axis=(0, 2, 3)), 1, atol=1e-4)
    _assert_pixels_round_trip(arrays, written)


@pytest.mark.parametrize("gz", [False, True], ids=["idx", "idx.gz"])
@pytest.mark.parametrize(("name", "kind"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_idx_files_round_trip(tmp_path, name, kind, gz):
    written = write_mnist(tmp_path, n_train=50, n_test=10, seed=1, kind=kind, gz=gz)
    arrays = load_arrays(DataSpec(name, root=str(tmp_path)))
    assert arrays.x_train.shape == (40, 1, 28, 28) and arrays.x_test.shape == (10, 1, 28, 28)
    assert len(arrays.class_names) == 10
    assert arrays.class_names[0] == ("0 - zero" if kind == "MNIST" else "T-shirt/top")
    assert not [f for f in (tmp_path / kind / "raw").iterdir() if f.name.startswith(".")]
    _assert_pixels_round_trip(arrays, written)


def _assert_pixels_round_trip(arrays: Arrays, written) -> None:
    """Every loaded image is a written image (exact bytes, CHW order) with its label."""
    def labels_by_image(x, y):
        return {image.tobytes(): int(label) for image, label in zip(x, y)}

    train = labels_by_image(written.x_train, written.y_train)
    loaded = labels_by_image(denormalise(np.concatenate([arrays.x_train, arrays.x_val])),
                             np.concatenate([arrays.y_train, arrays.y_val]))
    assert loaded == train  # train + val is the official train set, nothing lost or mixed
    test = labels_by_image(written.x_test, written.y_test)
    assert labels_by_image(denormalise(arrays.x_test), arrays.y_test) == test


def test_cifar10_damaged_batch_is_a_value_error_naming_the_folder(tmp_path):
    write_cifar10(tmp_path, n_train_per_batch=10, n_test=10)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    message = r"cifar10: cannot read the CIFAR-10 batches in .*cifar-10-batches-py"
    with pytest.raises(ValueError, match=message):
        load_arrays(DataSpec("cifar10", root=str(tmp_path)))


@pytest.mark.parametrize(("name", "expected"), [
    ("cifar10", "cifar-10-batches-py/data_batch_1..5, test_batch"),
    ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
    ("fashion_mnist", "FashionMNIST/raw/train-images-idx3-ubyte"),
    ("image_folder", "<class>/<image>"),
])
def test_missing_root_says_what_was_expected_where(tmp_path, name, expected):
    root = tmp_path / "nothing here"
    with pytest.raises(ValueError) as err:
        load_arrays(DataSpec(name, root=str(root)))
    message = str(err.value)
    assert message.startswith(f"{name}: no ") and f"{root}/{expected}" in message
    with pytest.raises(ValueError, match=f"{name}: root is required"):
        load_arrays(DataSpec(name))


def test_root_one_level_too_deep_gets_a_hint(tmp_path):
    write_mnist(tmp_path)
    with pytest.raises(ValueError, match=r"root is the folder that contains MNIST/"):
        load_arrays(DataSpec("mnist", root=str(tmp_path / "MNIST")))


# --- image folder ----------------------------------------------------------------------


def test_image_folder_resizes_to_rgb_squares_with_folder_names_as_classes(tmp_path):
    written = write_image_folder(tmp_path, classes=("cat", "dog"), per_class=(6, 9),
                                 size_range=(5, 40), seed=0)
    arrays = load_arrays(DataSpec("image_folder", root=str(tmp_path), image_size=12))
    assert arrays.class_names == ("cat", "dog") and arrays.num_classes == 2
    x = np.concatenate([arrays.x_train, arrays.x_val, arrays.x_test])
    y = np.concatenate([arrays.y_train, arrays.y_val, arrays.y_test])
    assert x.shape == (15, 3, 12, 12) and arrays.input_shape == (3, 12, 12)
    assert np.bincount(y).tolist() == [6, 9]
    assert len(arrays.y_test) == 3 and len(arrays.y_val) == 3  # ceil(20% of 15), ceil(20% of 12)
    # Solid-colour images stay solid after resizing, and each class keeps its own colour.
    assert np.ptp(x, axis=(2, 3)).max() < 1e-5
    colour = x[:, :, 0, 0]
    for label in (0, 1):
        assert np.ptp(colour[y == label], axis=0).max() < 1e-5
    # Normalising per channel keeps the order of the two colours in every channel.
    cat, dog = (np.array(next(c for _, label, c in written if label == k)) for k in (0, 1))
    assert (np.sign(colour[y == 0][0] - colour[y == 1][0]) == np.sign(cat - dog)).all()


def test_image_folder_converts_grey_and_transparent_images_to_rgb(tmp_path):
    from PIL import Image

    for name, mode in (("grey", "L"), ("alpha", "RGBA"), ("palette", "P")):
        (tmp_path / name).mkdir()
        for i in range(5):
            Image.new(mode, (7 + i, 9), 40 * i).save(tmp_path / name / f"{i}.png")
    arrays = load_arrays(DataSpec("image_folder", root=str(tmp_path), image_size=4,
                                  test_fraction=0, val_fraction=0.4))
    assert arrays.x_train.shape == (9, 3, 4, 4) and arrays.x_test.shape == (0, 3, 4, 4)


def test_image_folder_unreadable_image_names_the_file(tmp_path):
    write_image_folder(tmp_path, classes=("a", "b"), per_class=5)
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"image_folder: cannot read image .*broken.png"):
        load_arrays(DataSpec("image_folder", root=str(tmp_path)))


# --- devices and the cache -------------------------------------------------------------


def _read_only_copy(arrays: Arrays) -> Arrays:
    """What ``ray.get`` returns: arrays rebuilt over read-only, out-of-band buffers."""
    buffers = []
    payload = pickle.dumps(arrays, protocol=5, buffer_callback=buffers.append)
    return pickle.loads(payload, buffers=[b.raw().toreadonly() for b in buffers])


def test_to_device_shares_read_only_memory_without_warning():
    arrays = _read_only_copy(load_arrays(DataSpec("iris")))
    assert not arrays.x_train.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = to_device(arrays, "cpu")
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        tensor, array = getattr(data, field), getattr(arrays, field)
        assert tensor.data_ptr() == array.ctypes.data  # the same memory, no copy
        assert tensor.shape == array.shape
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert (data.num_classes, data.input_shape, data.class_names) == (3, (4,), arrays.class_names)


def test_load_dataset_is_cached_per_spec_and_device():
    dataset_cache_clear()
    spec = DataSpec("iris")
    first = load_dataset(spec)
    assert load_dataset(DataSpec("iris")) is first  # equal specs hit the same entry
    assert load_dataset(spec, torch.device("cpu")) is first
    assert load_dataset(DataSpec("iris", data_seed=1)) is not first
    dataset_cache_clear()
    assert load_dataset(spec) is not first


def test_load_dataset_needs_a_spec():
    with pytest.raises(TypeError, match="spec must be a DataSpec, got str"):
        load_dataset("digits")
