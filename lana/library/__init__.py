"""The library: one HDF5 file with every candidate's weights, scores and latency tables.

The layout is documented in ARCHITECTURE.md; this package is the only code that opens it.
Nothing in it is a pickle: arrays, plus JSON in attributes, each dataset and the attributes
covered by checksums. :class:`Library` reads (torch-free, so that ``lana info``/``solve`` start
fast), :func:`write_library` and :func:`write_latency_table` write, atomically. Torch modules made
from a library (teacher, candidates) are built in :mod:`lana.context`.
"""

from lana.library.file import FORMAT, FORMAT_VERSION, LibraryError, attr_value
from lana.library.info import format_info, read_info
from lana.library.reader import LayerRecord, Library
from lana.library.writer import write_latency_table, write_library, write_scores

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LayerRecord",
    "Library",
    "LibraryError",
    "attr_value",
    "format_info",
    "read_info",
    "write_latency_table",
    "write_library",
    "write_scores",
]
