"""Image files that test a reader: a 16-bit ramp, a decompression-bomb header, a truncated PNG, and a guard that
turns a reader hung on a FIFO into a failing test. Kept apart from the reader so that tests fail, not error, without
it."""
import contextlib
import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# a 16-bit ramp with the extremes, a value that clipping turns into 255 and 8-bit rounding edges
RAMP_16 = np.array([[0, 1, 128, 129, 257, 1000], [32767, 32768, 40000, 65280, 65534, 65535]], dtype=np.uint16)


def expected_8bit(values: np.ndarray) -> np.ndarray:
    """value * 255 / 65535, rounded: written out independently of the reader."""
    return np.array([[int(v * 255 / 65535 + 0.5) for v in row] for row in values.tolist()], dtype=np.uint8)


def write_16bit_png(path: Path, values: np.ndarray = RAMP_16) -> Path:
    Image.fromarray(values).save(path)
    with Image.open(path) as image:
        assert image.mode == 'I;16', 'Pillow writes and reads a 16-bit greyscale PNG'
    return path


def write_png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height 8-bit grey pixels in a few bytes: the shape of a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    header = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(b'\0' * 64))
                     + chunk(b'IEND', b''))
    return path


def write_truncated_png(path: Path, seed: int = 0) -> Path:
    whole = path.with_name('whole_' + path.name)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(whole)
    path.write_bytes(whole.read_bytes()[:-200])
    whole.unlink()
    return path


@contextlib.contextmanager
def fifo_unblocker(fifo: Path, every: float = 30.0):
    """A reader that opens ``fifo`` would wait forever for a writer; every ``every`` seconds this opens and closes
    the write end, so such a reader sees an empty file and its test fails instead of hanging."""
    stop = threading.Event()

    def unblock():
        while not stop.wait(every):
            with contextlib.suppress(OSError):  # ENXIO: nobody is reading, which is what should happen
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    thread = threading.Thread(target=unblock, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
