"""An unreadable image is skipped with its file name in the log, not only its index."""

import logging

import numpy as np
from PIL import Image

from attnzoo.train.data import NamedImageDataset


def test_a_truncated_jpeg_is_skipped_and_named(tmp_path, caplog):
    folder = tmp_path / "cls"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{name}.jpg", quality=90)
    data = (folder / "b.jpg").read_bytes()
    (folder / "b.jpg").write_bytes(data[: len(data) // 2])  # truncated mid-stream
    dataset = NamedImageDataset(str(tmp_path), class_map={"cls": 0})
    names = [dataset.filename(i) for i in range(len(dataset))]
    with caplog.at_level(logging.WARNING):
        image, target = dataset[names.index("cls/b.jpg")]
    assert image.size == (16, 16) and target == 0  # the next image instead
    assert any("skipped unreadable image" in r.message and "b.jpg" in r.message for r in caplog.records)
