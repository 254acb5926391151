"""The shared pixel conversions (latentdiff.pixels): every uint8 value survives the trip to [−1, 1] and back,
the channels-last form is the channels-first one transposed, and out-of-range values are clamped."""
import numpy as np
import torch

from latentdiff.pixels import save_grid, to_uint8, to_unit, to_unit_hwc


def test_every_uint8_value_round_trips_exactly():
    values = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(2, 3, 16, 16)
    x = to_unit(values)
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    back = to_uint8(x)  # (B, H, W, 3)
    assert back.dtype == np.uint8
    assert np.array_equal(back, values.permute(0, 2, 3, 1).numpy())


def test_channels_last_input_matches_channels_first():
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (3, 8, 5, 3), dtype=np.uint8)
    chw = torch.from_numpy(hwc).permute(0, 3, 1, 2)
    assert torch.equal(to_unit_hwc(hwc), to_unit(chw))
    assert to_unit_hwc(hwc).shape == (3, 3, 8, 5)


def test_out_of_range_values_are_clamped():
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 7.0]).reshape(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert to_uint8(x)[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]


def test_save_grid_lays_out_rows_and_scale(tmp_path):
    from PIL import Image

    images = np.stack([np.full((4, 6, 3), v, np.uint8) for v in (10, 20, 30)])
    save_grid(images, 2, tmp_path / "sub" / "g.png", scale=3)
    grid = np.array(Image.open(tmp_path / "sub" / "g.png"))
    assert grid.shape == (2 * 4 * 3, 2 * 6 * 3, 3)  # 2 rows × 2 columns, the 4th cell white
    assert grid[0, 0, 0] == 10 and grid[0, -1, 0] == 20 and grid[-1, 0, 0] == 30 and grid[-1, -1, 0] == 255
