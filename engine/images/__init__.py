"""The image format: typed records, validated reading/writing, pagemaps and page files.

Writers use `ImageDir.create`; readers use `load()` which validates everything and returns
a `DumpImage`. See docs/IMAGES.md for the on-disk layout.
"""

from engine.images.imgdir import (
    PE_PARENT,
    PE_PRESENT,
    ImageDir,
    ImageError,
    Pagemap,
    PagemapEntry,
    PagesReader,
    PagesWriter,
)
from engine.images.load import DumpImage, ShmemImage, TaskImage, load

__all__ = [
    "PE_PARENT",
    "PE_PRESENT",
    "DumpImage",
    "ImageDir",
    "ImageError",
    "Pagemap",
    "PagemapEntry",
    "PagesReader",
    "PagesWriter",
    "ShmemImage",
    "TaskImage",
    "load",
]
