"""Unreadable files in an image folder, found before training starts (issue 27 item 4).

Every file of a timm folder or ``.tar`` dataset is opened, verified and decoded at reduced scale
in a few threads, with a progress bar; :func:`lana.folder.open_folder` leaves what fails out of
every split and warns once, instead of a training run stopping mid-epoch on a truncated JPEG.
"""

from __future__ import annotations

import functools
import logging
from concurrent.futures import ThreadPoolExecutor

from lana.stream import _cores, _filename

__all__ = ["scan_bad_files"]

log = logging.getLogger(__name__)


def _readable(reader, index: int, decode: bool) -> bool:
    """Whether image ``index`` opens, verifies and (with ``decode``) decodes at 1/8 scale."""
    from PIL import Image

    try:
        fileobj, _ = reader[index]
        with fileobj:
            with Image.open(fileobj) as image:
                image.verify()  # headers and, for PNG, checksums: cheap, misses truncated JPEGs
            if decode:
                fileobj.seek(0)
                with Image.open(fileobj) as image:
                    image.draft(image.mode, (1, 1))  # JPEG decodes at 1/8 scale: a truncated file still fails
                    image.load()
        return True
    except Exception:  # any failure (OSError, SyntaxError, decompression bomb, ...) makes the file unusable
        return False


def _bad_indices(dataset, decode: bool = True, progress: bool = True, threads: int | None = None) -> list[int]:
    from timm.data.readers.reader_image_folder import ReaderImageFolder
    from timm.data.readers.reader_image_in_tar import ReaderImageInTar
    from tqdm.auto import tqdm

    reader = getattr(dataset, "reader", None)
    if not isinstance(reader, (ReaderImageFolder, ReaderImageInTar)):
        log.info("%s: not a folder or .tar, files not scanned", type(reader or dataset).__name__)
        return []
    # a tar reader shares one open TarFile: one thread; folder files open independently
    threads = threads or (min(8, _cores()) if isinstance(reader, ReaderImageFolder) else 1)
    check = functools.partial(_readable, reader, decode=decode)
    bad, block = [], 1024  # futures for a million files at once would hold ~1 GB
    bar = tqdm(total=len(reader), desc="checking images", unit="img", disable=not progress, mininterval=1.0)
    with ThreadPoolExecutor(threads) as pool, bar:
        for start in range(0, len(reader), block):
            indices = range(start, min(start + block, len(reader)))
            bad += [i for i, ok in zip(indices, pool.map(check, indices)) if not ok]
            bar.update(len(indices))
    return bad


def scan_bad_files(dataset, decode: bool = True, progress: bool = True, threads: int | None = None) -> list[str]:
    """Paths of the files of a timm folder or .tar dataset that do not open as images.

    Every file is opened and verified, and with ``decode`` decoded at reduced scale (JPEGs at 1/8,
    which still finds truncated files), in ``threads`` threads with a progress bar.

    Args:
        dataset: a timm ``ImageDataset`` (e.g. ``FolderSource.bases["train"]``).
        decode: also decode (slower: reads every file whole; False reads headers only).
        progress: show a tqdm bar with an ETA.
        threads: reader threads (default: up to 8 on a folder, 1 on a .tar).

    Returns:
        The bad files' paths (tar members as ``TAR/member``), in the dataset's order.
    """
    return [_filename(dataset, i) for i in _bad_indices(dataset, decode, progress, threads)]
