"""lungseg_utils.preprocess: the HU window to [0, 1] and back, masks to network tensors."""

import numpy as np
import pytest

from lungseg_utils import config
from lungseg_utils.errors import LungsegInputError
from lungseg_utils.preprocess import (
    binarise_mask,
    preprocess_case,
    to_tensor,
    window_normalise,
)


def test_window_normalise_clips_and_scales_over_the_window():
    hu = np.array([-2000.0, -1000.0, -350.0, 300.0, 3000.0], np.float64)
    x = window_normalise(hu)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, [0.0, 0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(window_normalise(hu, (-1000, 0)), [0, 0, 0.65, 1, 1])
    assert config.HU_WINDOW == (-1000.0, 300.0)
    with pytest.raises(LungsegInputError, match="window"):
        window_normalise(hu, (0.0, 0.0))


def test_masks_and_tensors():
    m = np.array([[0, 1], [2, 255]], np.uint8)
    np.testing.assert_array_equal(binarise_mask(m), [[0, 1], [1, 1]])
    assert binarise_mask(m).dtype == np.uint8
    t = to_tensor(np.zeros((4, 5, 6), np.int16))
    assert t.shape == (4, 5, 6, 1) and t.dtype == np.float32
    ct = np.full((4, 4, 4), -350.0)
    x, y = preprocess_case(ct, m[0, 1] * np.ones((4, 4, 4)))
    assert x.shape == y.shape == (4, 4, 4, 1) and np.allclose(x, 0.5) and np.all(y == 1.0)
    assert preprocess_case(ct)[1] is None


def test_window_normalise_gives_float32_for_any_input_dtype():
    for dtype in (np.int16, np.int32, np.float32, np.float64):
        x = window_normalise(np.array([-1500, -1000, 300, 2000], dtype))
        assert x.dtype == np.float32
        np.testing.assert_array_equal(x, [0, 0, 1, 1])
