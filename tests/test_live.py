"""Uploads are decoded defensively: each bad file gets a clear message, each odd but valid one works."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from d3s.live import UploadError, generate_one, read_upload


def save(tmp_path, name, image, **kw):
    path = tmp_path / name
    image.save(path, **kw)
    return path


def huge_png_header(tmp_path, side=20000):
    """A small file whose PNG header claims side x side pixels (a decompression bomb)."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[12:29]  # type + 13 bytes of IHDR data
    ihdr[4:12] = struct.pack(">II", side, side)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    path = tmp_path / "huge.png"
    path.write_bytes(bytes(data))
    return path


def test_bad_uploads_get_messages(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    with pytest.raises(UploadError, match="could not be read as an image"):
        read_upload(text)

    jpeg = save(tmp_path, "ok.jpg", Image.new("RGB", (64, 64), (10, 200, 30)))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(jpeg.read_bytes()[:200])
    with pytest.raises(UploadError, match="could not be read"):
        read_upload(truncated)

    with pytest.raises(UploadError, match="only 1x1 pixels"):
        read_upload(save(tmp_path, "dot.png", Image.new("RGB", (1, 1))))

    with pytest.raises(UploadError, match="megapixels are accepted"):
        read_upload(huge_png_header(tmp_path))  # refused from its header, never decoded
    with pytest.raises(UploadError, match="8000x8000 pixels"):
        read_upload(huge_png_header(tmp_path, side=8000))  # under PIL's own bomb limit, over ours


def test_odd_but_valid_uploads_become_rgb(tmp_path):
    deep = Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16))
    assert read_upload(save(tmp_path, "deep.png", deep)).mode == "RGB"
    cmyk = read_upload(save(tmp_path, "cmyk.jpg", Image.new("CMYK", (32, 32), (0, 255, 255, 0))))
    assert cmyk.mode == "RGB" and np.asarray(cmyk)[0, 0, 0] > 200  # red stays red
    rgba = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    assert tuple(np.asarray(read_upload(save(tmp_path, "clear.png", rgba)))[0, 0]) == (255, 255, 255)  # on white

    # EXIF orientation 6 (rotate 90 degrees clockwise to display): a 40x20 file shows as 20x40.
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = read_upload(save(tmp_path, "rotated.jpg", Image.new("RGB", (40, 20)), exif=exif))
    assert rotated.size == (20, 40)


def test_generate_one_with_uploaded_photo_and_template(tmp_path):
    from d3s.diffusion import load_pipeline

    pipe = load_pipeline("tiny", device="cpu")
    photo = save(tmp_path, "p.png", Image.new("RGB", (50, 30), (255, 0, 0)))
    template = save(tmp_path, "t.png", Image.new("RGB", (90, 70), (0, 0, 255)))
    steps = []
    r = generate_one(pipe, "281", "snow", seed=5, photo=photo, template=template, size=64, steps=4,
                     callback=lambda i, n: steps.append((i, n)))
    guide = np.asarray(r.guide)
    x0, y0, x1, y1 = r.choice.paste_box
    assert x1 - x0 == 25 and (guide[y0:y1, x0:x1] == [255, 0, 0]).all()
    assert (guide[:y0] == [0, 0, 255]).all()
    assert r.image.size == (64, 64) and r.prompt.endswith("in snow")
    assert steps[-1] == (3, 3)
