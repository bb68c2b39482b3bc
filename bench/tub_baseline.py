"""The recorder's baseline: what DonkeyCar's tub writer does per record, written here for the
comparison (not DonkeyCar's code, and not a dependency).

A DonkeyCar tub is a directory with one JPEG file per camera image, saved by Pillow
(`Image.fromarray(...).save(path)`, Pillow's default quality 75 and 4:2:0 chroma, like ours), and
a catalog of JSON lines, one per record, naming the image file, appended to a text file. Here each
camera frame is saved once and each control step adds one catalog line that names the newest
frame's file. That is the cheapest a tub can be on a 50 Hz loop with a 30 fps camera (DonkeyCar
saves an image with every record), so the comparison flatters the baseline.

Like the recorder it takes frames from a `FrameSource` on a thread of its own (`tub-frames`) and
steps from the control thread through `on_step` (O(1)), written by a second thread
(`tub-writer`), so CPU is measured the same way for both.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from pathlib import Path
from typing import Any

from PIL import Image

from brain.rlds.recorder import FrameSource, StepSample

POLL_S = 0.1  # the writer thread wakes as often as the recorder's writer does


class TubWriter:
    def __init__(self, path: Path, frames: FrameSource, quality: int = 75) -> None:
        self.path = Path(path)
        self.frames = frames
        self.quality = quality
        self.images = self.path / "images"
        self._steps: collections.deque[StepSample] = collections.deque()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._latest_image = ""  # the newest frame's file name, for the next catalog line
        self.frames_written = 0
        self.records = 0
        self.bytes = 0

    def start(self, metadata: dict[str, Any]) -> None:
        self.images.mkdir(parents=True)
        (self.path / "manifest.json").write_text(json.dumps(
            {"inputs": ["cam/image_array", "user/angle", "user/throttle", "user/mode"],
             "types": ["image_array", "float", "float", "str"], "metadata": metadata}))
        self._threads = [threading.Thread(target=self._frame_thread, name="tub-frames"),
                         threading.Thread(target=self._writer_thread, name="tub-writer")]
        for t in self._threads:
            t.start()

    def on_step(self, step: StepSample) -> None:
        if self._threads and not self._stop.is_set():  # only while recording
            self._steps.append(step)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        for t in self._threads:
            t.join()
        return {"frames": self.frames_written, "records": self.records, "bytes": self.bytes}

    def _frame_thread(self) -> None:
        last = -1
        while not self._stop.is_set():
            frame = self.frames.wait_newer(last, 0.1)
            if frame is None:
                continue
            last = frame.seq
            name = f"{frame.seq}_cam_image_array_.jpg"
            Image.fromarray(frame.image).save(self.images / name, quality=self.quality)
            self.bytes += (self.images / name).stat().st_size
            self._latest_image = name
            self.frames_written += 1

    def _writer_thread(self) -> None:
        with open(self.path / "catalog_0.catalog", "a", encoding="utf-8") as catalog:
            while not (self._stop.is_set() and not self._steps):
                if not self._steps:
                    time.sleep(POLL_S)
                    continue
                step = self._steps.popleft()
                line = json.dumps({
                    "_index": self.records, "_timestamp_ms": int(step.t_wall * 1000),
                    "cam/image_array": self._latest_image, "user/angle": step.action[0],
                    "user/throttle": step.action[1], "user/mode": step.mode}) + "\n"
                catalog.write(line)
                catalog.flush()  # a record is on disk (page cache) once written, as in a tub
                self.bytes += len(line)
                self.records += 1
