"""The .vqz container: one versioned, checksummed file format for every codec.

Needs only the standard library; see docs/bitstream.md for the byte layout.
"""

from bitstream.container import (
    FORMAT_MAJOR,
    FORMAT_MINOR,
    NO_WEIGHTS,
    AudioInfo,
    Chunk,
    ChunkKind,
    Container,
    ImageInfo,
    Limits,
    MediaKind,
    parse,
    serialize,
)
from bitstream.errors import (
    BitstreamError,
    ChecksumError,
    LimitExceededError,
    MalformedHeaderError,
    NotAVqzFileError,
    TruncatedError,
    UnsupportedChunkError,
    UnsupportedVersionError,
    VqzError,
)

__all__ = [
    "FORMAT_MAJOR",
    "FORMAT_MINOR",
    "NO_WEIGHTS",
    "AudioInfo",
    "Chunk",
    "ChunkKind",
    "Container",
    "ImageInfo",
    "Limits",
    "MediaKind",
    "parse",
    "serialize",
    "BitstreamError",
    "ChecksumError",
    "LimitExceededError",
    "MalformedHeaderError",
    "NotAVqzFileError",
    "TruncatedError",
    "UnsupportedChunkError",
    "UnsupportedVersionError",
    "VqzError",
]
