"""Preprocessing equals transformers' processor; sources sample at the target rate; bad files fail clearly."""

import threading
import time

import numpy as np
import pytest
import torch

from livesight.errors import InputError
from livesight.vision.ingest import FrameQueue, Ingest
from livesight.vision.preprocess import fit_size, to_patches
from livesight.vision.sources import FileSource, Frame, SourceEvent, SyntheticSource, open_source


def test_patches_match_transformers_video_processor():
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    proc = Qwen2VLVideoProcessor()
    video = np.random.default_rng(0).integers(0, 256, (4, 56, 112, 3), dtype=np.uint8)
    ref = proc(videos=[torch.from_numpy(video)], do_resize=False, do_sample_frames=False, return_tensors="pt")
    ours, grid = to_patches(torch.from_numpy(video).permute(0, 3, 1, 2).float() / 255, proc.image_mean, proc.image_std)
    assert list(grid) == ref["video_grid_thw"][0].tolist()
    assert torch.allclose(ours, ref["pixel_values_videos"], atol=1e-5)


@pytest.mark.parametrize("h,w,max_pixels", [(360, 640, 364 * 644), (1080, 1920, 12544), (100, 30, 50000), (20, 20, 784)])
def test_fit_size_bounds(h, w, max_pixels):
    fh, fw = fit_size(h, w, max_pixels)
    assert fh % 28 == 0 and fw % 28 == 0 and fh >= 28 and fw >= 28
    assert fh * fw <= max(max_pixels, 28 * 28 * max(1, (w // h) + 1))
    if h * w <= max_pixels and h >= 28 and w >= 28:
        assert h - 28 < fh <= h and w - 28 < fw <= w


def _check_rate(frames: list[Frame], fps: float, seconds: float, frames_per_chunk: int = 2):
    times = np.array([f.t for f in frames])
    assert np.all(np.diff(times) > 0), "timestamps must increase"
    for c in range(int(seconds)):  # each 1-s chunk holds the target count within one frame
        in_chunk = ((times >= c) & (times < c + 1)).sum()
        assert abs(in_chunk - fps) <= 1, (c, in_chunk)
    assert abs(len(frames) - fps * seconds) <= frames_per_chunk


def test_file_source_samples_presentation_time(clip):
    for fps in (2.0, 4.0, 7.0):
        source = FileSource(clip, fps)
        frames = list(source)
        _check_rate(frames, fps, 8.0)
        assert len(frames) == int(fps * 8)  # an 8.0-s file gives exactly fps x 8 samples
        assert frames[0].image.shape == (180, 320, 3) and frames[0].image.dtype == np.uint8


def test_file_source_shows_the_frame_presented_at_each_time(clip):
    """Sample k/fps shows the synthetic frame rendered for that time (the clock moves)."""
    from livesight.vision.synthetic import render
    frames = list(FileSource(clip, 2.0, seconds=3.0))
    for f in frames:
        diff = np.abs(f.image.astype(int) - render(f.t, 320, 180).astype(int)).mean()
        other = np.abs(f.image.astype(int) - render(f.t + 0.5, 320, 180).astype(int)).mean()
        assert diff < other, f.t


def test_synthetic_source_rate():
    frames = list(SyntheticSource(2.0, 5.0, 160, 90))
    _check_rate(frames, 2.0, 5.0)
    assert not np.array_equal(frames[0].image, frames[3].image)


@pytest.mark.parametrize("kind", ["missing", "empty", "corrupt", "text", "folder"])
def test_bad_video_files_raise_clear_errors(tmp_path, kind):
    path = tmp_path / "bad.mp4"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "corrupt":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "text":
        path = tmp_path / "notes.txt"
        path.write_text("not a video\n" * 50)
    elif kind == "folder":
        path = tmp_path
    with pytest.raises(InputError) as err:
        open_source(str(path), 2.0)
    expected = {"missing": "not found", "empty": "empty", "corrupt": "cannot decode", "text": "cannot decode",
                "folder": "folder"}[kind]
    assert expected in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("spec,words", [("ftp://cam/x", "unknown source scheme 'ftp'"), ("webcam:x", "webcam:N"),
                                        ("webcam", "webcam:N")])
def test_unknown_source_specs(spec, words):
    with pytest.raises(InputError, match=words):
        open_source(spec, 2.0)


def test_unreachable_url_fails_at_open_with_message():
    with pytest.raises(InputError, match="cannot open rtsp://127.0.0.1:9/none"):
        from livesight.vision.sources import LiveSource
        LiveSource("rtsp://127.0.0.1:9/none", 2.0, timeout_s=2.0)


def test_live_queue_drops_oldest_frames_but_never_events():
    q = FrameQueue(3, drop_oldest=True)
    for i in range(5):
        q.put(Frame(np.zeros(1), float(i)))
    q.put(SourceEvent("error", 5.0, "lost"))
    q.put(Frame(np.zeros(1), 6.0))
    q.close()
    items = []
    while (item := q.get()) is not None:
        items.append(item)
    assert [i.t for i in items] == [3.0, 4.0, 5.0, 6.0] and q.dropped == 3
    assert isinstance(items[2], SourceEvent)


def test_file_queue_blocks_instead_of_dropping():
    q = FrameQueue(2, drop_oldest=False)
    done = threading.Event()

    def produce():
        for i in range(6):
            q.put(Frame(np.zeros(1), float(i)))
        q.close()
        done.set()

    threading.Thread(target=produce, daemon=True).start()
    time.sleep(0.2)
    assert not done.is_set()  # blocked on the full queue
    got = []
    while (item := q.get()) is not None:
        got.append(item.t)
    assert got == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0] and q.dropped == 0


def test_ingest_reraises_producer_errors():
    class Broken:
        is_live = False

        def __iter__(self):
            yield Frame(np.zeros(1), 0.0)
            raise RuntimeError("decoder died")

        def close(self):
            pass

    it = iter(Ingest(Broken()))
    assert next(it).t == 0.0
    with pytest.raises(RuntimeError, match="decoder died"):
        next(it)
