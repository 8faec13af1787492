"""Image sizes read from headers as the decoder reads them, refusals before any pixel is decoded,
and the budget of decoded bytes that decoder threads share (issue #21, item 2)."""

from __future__ import annotations

import struct
import threading
import time

import cv2
import numpy as np
import pytest

from edgereg.errors import DecodeError
from edgereg.preprocess.decode import DecodeBudget, decode_cost, decode_image, image_dimensions

BOMB_SIDE = 16384  # a uniform 16k x 16k JPEG is ~4 MB and decodes into ~800 MB of BGR


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if OpenCV is asked to decode: a refusal must come from the header alone."""
    def imdecode(*args, **kwargs):
        raise AssertionError("cv2.imdecode was called: the image was decoded before the limit applied")
    monkeypatch.setattr(cv2, "imdecode", imdecode)


def jpeg_with_junk_before_sof(image: np.ndarray) -> bytes:
    """A JPEG of ``image`` with one stray byte between APP0 and the next segment (libjpeg skips it
    with a warning and decodes the image)."""
    data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 10])[1].tobytes()
    assert data[2:4] == b"\xff\xe0"  # APP0 (JFIF) right after SOI
    after_app0 = 4 + int.from_bytes(data[4:6], "big")
    return data[:after_app0] + b"\x00" + data[after_app0:]


def with_sof_size(data: bytes, width: int, height: int) -> bytes:
    data = bytearray(data)
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_a_16k_jpeg_bomb_behind_a_junk_byte_is_refused_before_decoding(no_decoding):
    bomb = with_sof_size(jpeg_with_junk_before_sof(np.full((16, 16, 3), 128, np.uint8)), BOMB_SIDE, BOMB_SIDE)
    assert image_dimensions(bomb) == (BOMB_SIDE, BOMB_SIDE)
    with pytest.raises(DecodeError, match=r"^'bomb.jpg': too large: 16384x16384 = 268 MP > 50 MP \(--max-pixels\)$"):
        decode_image(bomb, source="bomb.jpg")


def test_a_junk_byte_does_not_hide_a_real_jpeg_from_the_pixel_limit(monkeypatch):
    image = np.random.default_rng(0).integers(0, 256, (1000, 1200, 3), dtype=np.uint8)  # 1.2 MP
    junk = jpeg_with_junk_before_sof(image)
    assert decode_image(junk, max_pixels=0).shape == (1000, 1200, 3)  # the decoder reads past the junk
    assert image_dimensions(junk) == (1200, 1000)
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded before the limit applied"))
    with pytest.raises(DecodeError, match=r"too large: 1200x1000 = 1.2 MP > 1 MP"):
        decode_image(junk, max_pixels=1_000_000)


def test_jpeg_fill_bytes_stuffed_zeros_and_other_frame_markers_are_walked_like_libjpeg():
    data = cv2.imencode(".jpg", np.zeros((24, 40, 3), np.uint8))[1].tobytes()
    after_app0 = 4 + int.from_bytes(data[4:6], "big")
    padded = data[:after_app0] + b"junk\xff\x00more\xff\xff\xff" + data[after_app0 + 1:]  # fill before DQT
    assert image_dimensions(padded) == (40, 24)
    progressive = cv2.imencode(".jpg", np.zeros((24, 40, 3), np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1]
    assert image_dimensions(progressive.tobytes()) == (40, 24)  # SOF2
    sof = data.index(b"\xff\xc0")
    for marker in (0xC1, 0xC3, 0xC5, 0xC9, 0xCF):  # other SOFn carry the size in the same place
        assert image_dimensions(data[:sof + 1] + bytes([marker]) + data[sof + 2:]) == (40, 24)


def tiff_header(order: str, width: int, height: int, *, width_type: int = 3) -> bytes:
    """A minimal classic TIFF: header, then IFD0 with ImageWidth (SHORT or LONG) and ImageLength (LONG)."""
    endian = "<" if order == "II" else ">"

    def entry(tag, kind, value):
        if kind == 3:  # SHORT, left-justified in the 4-byte value field
            return struct.pack(endian + "HHIHH", tag, kind, 1, value, 0)
        return struct.pack(endian + "HHII", tag, kind, 1, value)

    ifd = struct.pack(endian + "H", 3) + entry(256, width_type, width) + entry(257, 4, height) \
        + entry(259, 3, 1) + struct.pack(endian + "I", 0)
    magic = b"II*\x00" if order == "II" else b"MM\x00*"
    return magic + struct.pack(endian + "I", 8) + ifd + b"\x00" * 64


@pytest.mark.parametrize("order", ["II", "MM"])
def test_tiff_size_is_read_from_ifd0_in_both_byte_orders(order, no_decoding):
    assert image_dimensions(tiff_header(order, 60000, 7, width_type=3)) == (60000, 7)
    big = tiff_header(order, 100_000, 90_000, width_type=4)
    assert image_dimensions(big) == (100_000, 90_000)
    with pytest.raises(DecodeError, match=r"too large: 100000x90000 = 9000 MP > 50 MP"):
        decode_image(big, source="scan.tif")


def test_real_tiff_and_jpeg2000_files_give_the_size_the_decoder_returns():
    image = np.random.default_rng(1).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    for ext in (".tiff", ".jp2"):
        data = cv2.imencode(ext, image)[1].tobytes()
        assert image_dimensions(data) == (80, 48), ext
        assert decode_image(data).shape == (48, 80, 3), ext
    jp2 = cv2.imencode(".jp2", image)[1].tobytes()
    codestream = jp2[jp2.index(b"jp2c") + 4:]  # a raw .j2k codestream: SOC, then SIZ
    assert image_dimensions(codestream) == (80, 48)
    forged = bytearray(codestream)
    forged[8:16] = struct.pack(">II", 30000, 30000)  # Xsiz, Ysiz
    assert image_dimensions(bytes(forged)) == (30000, 30000)


def test_a_tiff_whose_ifd0_declares_a_bomb_is_refused_before_decoding(no_decoding):
    data = bytearray(cv2.imencode(".tiff", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    assert image_dimensions(bytes(data)) == (8, 8)
    offset = struct.unpack("<I", data[4:8])[0]
    count = struct.unpack("<H", data[offset:offset + 2])[0]
    for at in range(offset + 2, offset + 2 + 12 * count, 12):
        tag, kind = struct.unpack("<HH", data[at:at + 4])
        if tag in (256, 257):
            code = "<H" if kind == 3 else "<I"
            data[at + 8:at + 8 + struct.calcsize(code)] = struct.pack(code, 20000)
    with pytest.raises(DecodeError, match=r"too large: 20000x20000 = 400 MP > 50 MP"):
        decode_image(bytes(data))


def test_formats_without_a_readable_size_are_refused_under_a_limit_and_decoded_without():
    pam = cv2.imencode(".pam", np.zeros((6, 9, 3), np.uint8))[1].tobytes()  # OpenCV decodes PAM; no size read here
    assert image_dimensions(pam) is None
    with pytest.raises(DecodeError, match=r"^'x.pam': not a decodable image \(no readable JPEG, PNG, .* header, so "
                                          r"its size cannot be checked before decoding; .*--max-pixels 0"):
        decode_image(pam, source="x.pam")
    assert decode_image(pam, max_pixels=0).shape == (6, 9, 3)


def test_a_decode_waits_for_its_bytes_in_the_shared_budget(monkeypatch):
    png = cv2.imencode(".png", np.full((20, 30, 3), 5, np.uint8))[1].tobytes()
    budget = DecodeBudget(limit_bytes=decode_cost(30, 20))
    decoding = threading.Event()
    real_imdecode = cv2.imdecode

    def imdecode(*args):
        decoding.set()
        return real_imdecode(*args)

    monkeypatch.setattr(cv2, "imdecode", imdecode)
    results = []
    with budget.hold(budget.limit_bytes):  # another decoder holds the whole budget
        worker = threading.Thread(target=lambda: results.append(decode_image(png, budget=budget)))
        worker.start()
        worker.join(0.3)
        assert not decoding.is_set() and worker.is_alive()  # cannot start while the bytes are taken
    worker.join(30)
    assert decoding.is_set() and results[0].shape == (20, 30, 3)
    assert budget.in_use == 0
    with budget.hold(10 * budget.limit_bytes):  # larger than the whole budget: charged the budget, decodes alone
        assert budget.in_use == budget.limit_bytes


class RecordingBudget(DecodeBudget):
    """A budget that records the most bytes held at once and how many decodes held it."""

    def __init__(self, limit_bytes):
        super().__init__(limit_bytes)
        self.peak, self.holds, self.lock = 0, 0, threading.Lock()

    def hold(self, cost):
        budget = super().hold(cost)

        class Recorded:
            def __enter__(inner):
                budget.__enter__()
                with self.lock:
                    self.holds += 1
                    self.peak = max(self.peak, self.in_use)
                time.sleep(0.01)  # keep it long enough for the other threads to try

            def __exit__(inner, *exc):
                return budget.__exit__(*exc)

        return Recorded()


def test_folder_scoring_and_uploads_decode_within_a_byte_budget(model_factory, tmp_path, monkeypatch):
    import edgereg.batch.scoring
    from edgereg.batch.scoring import output_columns, score_source
    from edgereg.batch.sources import open_source
    from edgereg.batch.writers import open_rows
    from edgereg.core.predictor import Predictor
    from edgereg.serve.uploads import Upload, prepare_uploads

    model = model_factory(targets=("conc",), range=((-2.0, 2.0),), units=("mg/L",))
    folder = tmp_path / "imgs"
    folder.mkdir()
    blobs = []
    for i in range(8):
        blobs.append(cv2.imencode(".png", np.full((40, 50, 3), i * 20, np.uint8))[1].tobytes())
        (folder / f"im{i}.png").write_bytes(blobs[-1])
    limit = 2 * decode_cost(50, 40)  # two images at a time, whatever the number of threads
    scoring_budget = RecordingBudget(limit)
    monkeypatch.setattr(edgereg.batch.scoring, "DecodeBudget", lambda: scoring_budget)
    predictor = Predictor(str(model), batch_size=2)
    with open_rows(tmp_path / "p.csv", output_columns(predictor)) as rows:
        stats = score_source(open_source(str(folder)), predictor, rows, None, decode_threads=6)
    assert stats.scored == 8 and scoring_budget.holds == 8 and scoring_budget.peak <= limit

    upload_budget = RecordingBudget(limit)
    prepared = prepare_uploads([Upload(f"u{i}.png", blob) for i, blob in enumerate(blobs)], predictor.config,
                               budget=upload_budget)
    assert len(prepared.index) == 8 and upload_budget.holds == 8 and upload_budget.peak <= limit


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".ppm", ".pfm", ".webp", ".tiff", ".jp2", ".gif", ".hdr",
                                 ".sr"])
def test_every_format_opencv_writes_here_gives_its_size_from_the_header(ext):
    image = np.random.default_rng(2).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(ext, image.astype(np.float32) if ext in (".pfm", ".hdr") else image)
    assert ok
    assert image_dimensions(encoded.tobytes()) == (80, 48)
    assert decode_image(encoded.tobytes()).shape == (48, 80, 3)
