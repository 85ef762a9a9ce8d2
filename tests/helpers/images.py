"""Hostile image files made byte by byte: decompression bombs, broken PNG chunks, plain grey PNGs."""
from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def grey_png_header(width: int, height: int) -> bytes:
    return PNG_SIGNATURE + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))


def bomb_png(side: int = 20000) -> bytes:
    """A few dozen bytes whose header declares ``side`` x ``side`` pixels (400 Mpx by default)."""
    return grey_png_header(side, side) + png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(b"IEND", b"")


def grey_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def broken_chunk_png() -> bytes:
    """A 64x64 PNG whose image data continues in a chunk with an invalid type: PIL raises SyntaxError on load."""
    rows = b"".join(b"\x00" + bytes(range(64)) for _ in range(64))
    data = zlib.compress(rows)
    return (grey_png_header(64, 64) + png_chunk(b"IDAT", data[:20]) + png_chunk(b"I\x00AT", data[20:])
            + png_chunk(b"IEND", b""))
