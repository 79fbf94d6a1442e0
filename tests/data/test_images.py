"""Image decoding (the JPEG fast path against PIL) and antialiased resizing."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
import pytest

from jaxpet import data
from jaxpet.data import images as images_lib


def test_jpeg_fast_path_matches_pil_and_reports_truncation(make):
    images = make.rng.integers(0, 256, (5, 24, 16, 3), dtype=np.uint8)
    blobs = [make.encode(img, "JPEG") for img in images]
    grey = make.encode(images[0][:, :, :1], "JPEG")
    assert images_lib.jpeg_header(blobs[0]) == (24, 16, 3)
    assert images_lib.jpeg_header(grey) == (24, 16, 1)
    assert images_lib.jpeg_header(make.encode(images[0], "PNG")) is None
    items = [((i,), f"img{i}.jpg", b) for i, b in enumerate(blobs)]
    decoded = images_lib.decode_images(items, "test", (24, 16, 3))
    pil = np.stack([np.asarray(Image.open(io.BytesIO(b))) for b in blobs])
    np.testing.assert_array_equal(decoded, pil)
    np.testing.assert_array_equal(
        images_lib.decode_images([((0,), "g.jpg", grey)], "test", (24, 16, 1)),
        np.asarray(Image.open(io.BytesIO(grey)))[None, :, :, None])
    with pytest.raises(data.DataError, match="could not decode image 'cut.jpg'"):
        images_lib.decode_images([((0,), "cut.jpg", blobs[1][: len(blobs[1]) // 2])], "t",
                                 (24, 16, 3))


def test_resize_images(make):
    images = np.stack([make.flat(7, (64, 64, 3)),
                       make.rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)])
    out = data.resize_images(images, (50, 40))
    assert out.shape == (2, 50, 40, 3) and out.dtype == np.uint8
    assert (out[0] == 7).all()
    grey = data.resize_images(images[:, :, :, :1], (32, 32))
    assert grey.shape == (2, 32, 32, 1) and (grey[0] == 7).all()
    # antialiased: a 1-pixel checkerboard averages to mid-grey instead of aliasing
    checker = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)[None, :, :, None]
    assert abs(float(data.resize_images(checker, (16, 16)).mean()) - 127.5) < 8
    with pytest.raises(data.DataError, match="uint8"):
        data.resize_images(images.astype(np.float32), (8, 8))
