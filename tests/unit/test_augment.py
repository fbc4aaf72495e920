"""Batched augmentation: what each transform does to a batch, and reproducibility."""

import pytest
import torch

from raytune_suite.training.augment import augment, augment_strength


@pytest.fixture(autouse=True)
def one_thread():
    """Small batches only lose from threads, badly so on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def images(n=16, channels=3, height=12, width=12, seed=0):
    """Strictly positive images, so zero padding is distinguishable from content."""
    return torch.rand(n, channels, height, width, generator=torch.Generator().manual_seed(seed)) + 1


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


ALL = {"crop_padding": 2, "flip": True, "max_rotation_deg": 10.0, "max_translate": 0.1}


@pytest.mark.parametrize("kwargs", [{}, {"crop_padding": 3}, {"flip": True},
                                    {"max_rotation_deg": 20.0}, {"max_translate": 0.2}, ALL])
def test_returns_a_new_batch_of_the_same_kind_and_leaves_the_input_alone(kwargs):
    x = images(n=8, height=10, width=14).to(torch.float64)
    before = x.clone()
    out = augment(x, generator=gen(), **kwargs)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.data_ptr() != x.data_ptr()
    assert torch.equal(x, before)


def test_strength_zero_is_the_input_itself_and_draws_nothing():
    x, generator = images(), gen()
    state = generator.get_state()
    assert augment_strength(x, 0.0, generator) is x
    assert torch.equal(generator.get_state(), state)


def test_strength_one_changes_the_batch_and_out_of_range_is_rejected():
    x = images()
    assert not torch.equal(augment_strength(x, 1.0, gen()), x)
    for strength in (-0.1, 1.5):
        message = f"strength must satisfy 0 <= strength <= 1, got {strength}"
        with pytest.raises(ValueError, match=message):
            augment_strength(x, strength, gen())


def test_flip_mirrors_some_samples_left_right_and_keeps_the_others():
    x = images(n=64)
    out = augment(x, generator=gen(), flip=True)
    kept = [torch.equal(o, s) for o, s in zip(out, x)]
    mirrored = [torch.equal(o, s.flip(-1)) for o, s in zip(out, x)]
    assert all(k or m for k, m in zip(kept, mirrored))
    assert 16 < sum(mirrored) < 48  # p = 0.5 per sample, not per batch


def shift(sample: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """The sample moved by (dy, dx) pixels, zeros where nothing moved in."""
    _, height, width = sample.shape
    out = torch.zeros_like(sample)
    out[:, max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        sample[:, max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)]
    return out


def test_crop_shifts_each_sample_by_at_most_the_padding():
    padding, x = 3, images(n=32)
    out = augment(x, generator=gen(), crop_padding=padding)
    offsets = []
    for o, s in zip(out, x):
        shifts = range(-padding, padding + 1)
        found = [(dy, dx) for dy in shifts for dx in shifts if torch.equal(o, shift(s, dy, dx))]
        assert len(found) == 1  # exactly one whole-pixel shift within the padding explains it
        offsets.append(found[0])
    assert len(set(offsets)) > 8  # offsets are drawn per sample
    assert any(dy or dx for dy, dx in offsets)


def test_same_seed_same_batch_other_seed_other_batch():
    x = images()
    first = augment(x, generator=gen(1), **ALL)
    assert torch.equal(augment(x, generator=gen(1), **ALL), first)
    assert not torch.equal(augment(x, generator=gen(2), **ALL), first)


def test_identical_samples_are_augmented_differently():
    x = images(n=1).expand(8, -1, -1, -1).contiguous()
    out = augment(x, generator=gen(), max_rotation_deg=15.0, max_translate=0.1)
    assert len({tuple(o.flatten().tolist()) for o in out}) == 8


ROWS, COLS = torch.arange(24.0)[:, None], torch.arange(24.0)[None, :]
CENTRE = 11.5  # the centre of a 24-pixel side, in pixel coordinates


def blob_batch(n: int, right: float) -> torch.Tensor:
    """A smooth blob ``right`` pixels right of the centre of a 24x24 image, n times."""
    blob = torch.exp(-((ROWS - CENTRE) ** 2 + (COLS - CENTRE - right) ** 2) / 4)
    return blob.expand(n, 1, 24, 24).contiguous()


def centroids(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of each sample's centre of mass, relative to the image centre."""
    mass = x[:, 0].sum(dim=(1, 2))
    row = (x[:, 0] * ROWS).sum(dim=(1, 2)) / mass - CENTRE
    col = (x[:, 0] * COLS).sum(dim=(1, 2)) / mass - CENTRE
    return row, col


def test_rotation_turns_each_sample_by_at_most_the_maximum_angle():
    x = blob_batch(32, right=6)
    out = augment(x, generator=gen(), max_rotation_deg=15.0)
    row, col = centroids(out)
    angle = torch.rad2deg(torch.atan2(row, col))
    assert torch.allclose(torch.hypot(row, col), torch.tensor(6.0), atol=0.1)  # turned, not moved
    assert angle.abs().max() <= 15.5 and angle.abs().max() > 10  # up to, and nearly, 15 degrees
    assert angle.min() < 0 < angle.max()  # both ways
    # Interpolation with zero fill never leaves the range of the input and zero.
    assert out.min() >= 0 and out.max() <= x.max() + 1e-6


def test_translation_moves_each_sample_by_at_most_the_maximum_fraction():
    x = blob_batch(32, right=0)
    out = augment(x, generator=gen(), max_translate=0.1)  # 10% of 24 = 2.4 pixels
    row, col = centroids(out)
    assert row.abs().max() <= 2.5 and col.abs().max() <= 2.5
    assert row.abs().max() > 1.5 and col.abs().max() > 1.5
    torch.testing.assert_close(out.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)), rtol=0.01, atol=0)
    assert out.min() >= 0 and out.max() <= x.max() + 1e-6


def test_rotation_of_a_non_square_image_is_a_rotation_in_pixels():
    # A blob 4 pixels right of the centre of a 16x32 image stays 4 pixels from the centre
    # at any angle. A rotation in affine_grid's [-1, 1] coordinates would squash it: at
    # 60 degrees it would land about 2.6 pixels from the centre.
    rows, cols = torch.arange(16.0)[:, None], torch.arange(32.0)[None, :]
    centre_row, centre_col = 7.5, 15.5
    blob = torch.exp(-((rows - centre_row) ** 2 + (cols - centre_col - 4) ** 2) / 2)
    x = blob.expand(32, 1, 16, 32).contiguous()
    out = augment(x, generator=gen(), max_rotation_deg=90.0)[:, 0]
    mass = out.sum(dim=(1, 2))
    row = (out * rows).sum(dim=(1, 2)) / mass - centre_row
    col = (out * cols).sum(dim=(1, 2)) / mass - centre_col
    assert torch.allclose(torch.hypot(row, col), torch.tensor(4.0), atol=0.15)
    assert row.abs().max() > 3  # some samples were turned by more than ~50 degrees


def test_rejects_bad_arguments_with_their_values():
    x = images()
    message = r"x must have shape \(N, C, H, W\), got shape \(3, 12, 12\)"
    with pytest.raises(ValueError, match=message):
        augment(x[0], generator=gen(), flip=True)
    with pytest.raises(ValueError, match="crop_padding must be an int >= 0, got -1"):
        augment(x, generator=gen(), crop_padding=-1)
    with pytest.raises(ValueError, match="max_rotation_deg must be >= 0, got -5"):
        augment(x, generator=gen(), max_rotation_deg=-5)
    with pytest.raises(ValueError, match="rotation and translation need floating-point images"):
        augment(x.to(torch.uint8), generator=gen(), max_translate=0.1)


def test_integer_images_can_be_cropped_and_flipped():
    x = (images() * 100).to(torch.uint8)
    out = augment(x, generator=gen(), crop_padding=2, flip=True)
    assert out.dtype == torch.uint8 and out.shape == x.shape
