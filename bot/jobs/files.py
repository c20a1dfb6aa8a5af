"""The JobManager's files: finished pictures under OUTPUT_DIR/YYYY/MM/DD, img2img inputs under inputs/.

A write that fails (a full disk, most often) leaves nothing behind: every file of the batch written so
far is removed before the error goes up, so a failed job never points at half a picture.
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
from collections.abc import Sequence
from pathlib import Path

from bot.db.jobs import SavedImage
from engine import grids, protocol

log = logging.getLogger(__name__)

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_TOLD = "an admin has been told in the log"


def write_failure(exc: OSError) -> str:
    """Why a job failed, for the member: no path, no host details; the log has those."""
    if exc.errno in _DISK_FULL:
        return f"the server's disk is full, so its pictures could not be saved; {_TOLD}"
    return f"its pictures could not be saved ({exc.strerror or 'write error'}); {_TOLD}"


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # the error being raised matters more; this one is only logged
            log.warning("could not remove the partial file %s: %s", path, exc)


class OutputFiles:
    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir

    def _day_dir(self) -> Path:
        day = dt.datetime.now(dt.UTC)
        path = self.output_dir / f"{day:%Y}" / f"{day:%m}" / f"{day:%d}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def save_images(
        self, job_id: str, size: tuple[int, int], images: Sequence[protocol.ImageResult]
    ) -> list[SavedImage]:
        """Write a batch; on OSError remove whatever of it was written, then raise."""
        folder = self._day_dir()
        saved: list[SavedImage] = []
        written: list[Path] = []
        try:
            for image in images:
                path = folder / f"{job_id}_{image.index}.png"
                tmp = path.with_suffix(".tmp")
                written.append(tmp)
                tmp.write_bytes(image.png)
                tmp.replace(path)  # atomic: a reader never sees half a file
                written[-1] = path
                width, height = png_size(image.png) or size
                saved.append(SavedImage(image.index, image.seed, str(path), width, height, image.nsfw))
        except OSError:
            _remove(written)
            raise
        return saved

    def save_input(self, job_id: str, data: bytes) -> Path:
        folder = self.output_dir / "inputs"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{job_id}.img"
        try:
            path.write_bytes(data)
        except OSError:
            _remove([path])
            raise
        return path

    @staticmethod
    def discard_input(path: str) -> None:
        """An input saved for a job whose row was never written: nothing else would ever remove it."""
        _remove([Path(path)])


def shown_picture(event: protocol.JobDone, saved: Sequence[SavedImage]) -> bytes | None:
    """What Discord is to show of a finished job, taken from the engine's result: its one image, or the
    grid the engine built. The grid comes from the engine, or from whoever can publish on the broker, so
    it is used only when it is a PNG of exactly the size the job's pictures make; anything else is
    ignored, and the bot builds the grid from the saved files as it would after a restart."""
    if len(saved) == 1 and not saved[0].nsfw and len(event.images) == 1:
        return event.images[0].png
    if event.grid is None or len(saved) < 2:
        return None
    if png_size(event.grid) != grids.grid_size([(i.width, i.height) for i in saved]):
        log.warning("the grid sent with job %s does not fit its pictures; building it here", event.job_id)
        return None
    return event.grid


def png_size(data: bytes) -> tuple[int, int] | None:
    # The IHDR chunk sits at a fixed offset in every PNG: no need to decode the image to size it.
    if len(data) >= 24 and data[:8] == b"\x89PNG\r\n\x1a\n":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None
