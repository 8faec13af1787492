"""Input sources: what each kind of PATH lists, in which order, and how it fails."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgereg.batch.sources import (
    CameraSource,
    FolderSource,
    GlobSource,
    ImageSource,
    ListFileSource,
    VideoSource,
    natural_key,
    open_source,
)
from edgereg.errors import CameraError, DecodeError, EdgeregError


def write_png(path, value=128, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((*size, 3), value, np.uint8))
    return path


def write_video(path, n_frames, size=(48, 64)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (size[1], size[0]))
    for i in range(n_frames):
        writer.write(np.full((*size, 3), (10 * i) % 250, np.uint8))
    writer.release()
    return path


def keys(source, select=None):
    return [entry.key for entry in source.entries(select)]


def test_folder_lists_images_in_natural_order_and_skips_other_files(tmp_path):
    for name in ("img10.png", "img2.PNG", "img1.jpg", "B.png", "a.png"):
        write_png(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    write_png(tmp_path / "sub" / "img0.png")
    source = FolderSource(tmp_path)
    names = [k.rsplit("/", 1)[1] for k in keys(source)]
    assert names == ["a.png", "B.png", "img1.jpg", "img2.PNG", "img10.png"]
    assert source.ignored == 1
    assert [e.index for e in source.entries()] == list(range(5))


def test_recursive_folder_sorts_each_folder_as_a_unit(tmp_path):
    write_png(tmp_path / "x10.png")
    write_png(tmp_path / "x2" / "b.png")
    write_png(tmp_path / "x2" / "a10.png")
    write_png(tmp_path / "x2" / "a9.png")
    relative = [k[len(str(tmp_path)) + 1:] for k in keys(FolderSource(tmp_path, recursive=True))]
    assert relative == ["x2/a9.png", "x2/a10.png", "x2/b.png", "x10.png"]
    assert keys(FolderSource(tmp_path)) == [str(tmp_path / "x10.png")]


def test_empty_folder_is_a_user_error_that_mentions_recursive(tmp_path):
    write_png(tmp_path / "deep" / "a.png")
    with pytest.raises(EdgeregError, match="--recursive"):
        FolderSource(tmp_path)


def test_natural_key_orders_numbers_by_value_and_is_total():
    names = ["a10", "a9", "A1", "a01", "a1", "b"]
    assert sorted(names, key=natural_key) == ["A1", "a01", "a1", "a9", "a10", "b"]


def test_glob_keeps_matching_images(tmp_path):
    for name in ("a1.png", "a2.png", "b1.png"):
        write_png(tmp_path / name)
    (tmp_path / "a3.txt").write_text("x")
    source = GlobSource(str(tmp_path / "a*"))
    assert keys(source) == [str(tmp_path / "a1.png"), str(tmp_path / "a2.png")]
    with pytest.raises(EdgeregError, match="no images match"):
        GlobSource(str(tmp_path / "zz*.png"))


def test_list_file_keeps_order_resolves_against_its_folder_and_skips_comments(tmp_path):
    write_png(tmp_path / "imgs" / "b.png")
    write_png(tmp_path / "imgs" / "a.png")
    listing = tmp_path / "list.txt"
    listing.write_text("# a comment\nimgs/b.png\n\n  imgs/a.png  \nmissing.png\n")
    source = ListFileSource(listing)
    entries = list(source.entries())
    assert [e.key for e in entries] == ["imgs/b.png", "imgs/a.png", "missing.png"]
    assert entries[0].path == tmp_path / "imgs" / "b.png"
    assert entries[2].path == tmp_path / "missing.png"  # listed: it becomes an error row later


def test_select_filters_by_position_and_key(tmp_path):
    for i in range(6):
        write_png(tmp_path / f"{i}.png")
    source = FolderSource(tmp_path)
    chosen = list(source.entries(lambda position, key: position % 2 == 1 and not key.endswith("3.png")))
    assert [e.index for e in chosen] == [1, 5]


def test_video_yields_every_frame_with_frame_keys_and_skips_unselected(tmp_path):
    video = write_video(tmp_path / "clip.avi", 6)
    source = VideoSource(video)
    entries = list(source.entries())
    assert [e.key for e in entries] == [f"{video}#frame={i}" for i in range(6)]
    assert all(e.frame.shape == (48, 64, 3) and e.frame.dtype == np.uint8 for e in entries)
    # frames keep their content in order (each frame was written 10 * i gray)
    assert [int(round(e.frame.mean() / 10)) for e in entries] == list(range(6))
    odd = list(source.entries(lambda position, key: position % 2 == 1))
    assert [e.index for e in odd] == [1, 3, 5]
    assert [int(round(e.frame.mean() / 10)) for e in odd] == [1, 3, 5]


def test_video_that_stops_early_yields_an_error_entry(tmp_path):
    video = write_video(tmp_path / "clip.avi", 40)
    data = video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    source = VideoSource(cut)
    entries = list(source.entries())
    good = [e for e in entries if e.error is None]
    assert 0 < len(good) < 40
    assert entries[-1].error is not None and "stops decoding" in entries[-1].error
    assert entries[-1].index == len(good)


def test_open_source_dispatches_on_what_the_path_is(tmp_path):
    image = write_png(tmp_path / "one.png")
    video = write_video(tmp_path / "v.avi", 2)
    listing = tmp_path / "l.txt"
    listing.write_text("one.png\n")
    assert isinstance(open_source(str(image)), ImageSource)
    assert isinstance(open_source(str(tmp_path)), FolderSource)
    assert isinstance(open_source(str(video)), VideoSource)
    assert isinstance(open_source(str(listing)), ListFileSource)
    assert isinstance(open_source(str(tmp_path / "*.png")), GlobSource)
    with pytest.raises(EdgeregError, match="input not found"):
        open_source(str(tmp_path / "nope.png"))
    (tmp_path / "bad.avi").write_bytes(b"not a video at all")
    with pytest.raises(DecodeError, match="not a video"):
        open_source(str(tmp_path / "bad.avi"))


def test_camera_source_reads_a_video_file_to_its_end(tmp_path):
    video = write_video(tmp_path / "v.avi", 3)
    camera = CameraSource(str(video))
    frames = [camera.read() for _ in range(4)]
    assert [ok for ok, _ in frames] == [True, True, True, False]
    assert camera.ended and camera.frames_read == 3
    camera.release()


class FlakyCapture:
    """A capture whose opens fail ``fail_opens`` times, then delivers ``frames`` frames."""

    opens = 0

    def __init__(self, target, fail_opens=1, frames=2):
        FlakyCapture.opens += 1
        self.fail = FlakyCapture.opens <= fail_opens
        self.left = frames

    def isOpened(self):
        return not self.fail

    def set(self, *args):
        return True

    def read(self):
        if self.left == 0:
            return False, None
        self.left -= 1
        return True, np.zeros((4, 4, 3), np.uint8)

    def release(self):
        pass


def test_camera_source_raises_on_open_failure_and_reopens_after_a_drop():
    FlakyCapture.opens = 0
    camera = CameraSource("3", open_capture=FlakyCapture)
    assert camera.name == "camera 3"
    with pytest.raises(CameraError, match="could not open camera 3"):
        camera.read()
    assert camera.read()[0] and camera.read()[0]
    assert camera.read() == (False, None)  # dropped: the next read opens again
    assert camera.read()[0] and FlakyCapture.opens == 3
    assert not camera.ended


def test_camera_spec_that_is_nothing_is_a_clear_error(tmp_path):
    with pytest.raises(CameraError, match="not a device index"):
        CameraSource(str(tmp_path / "missing.avi"))
