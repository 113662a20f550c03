"""The one error hierarchy of vqz.

Everything vqz raises on purpose derives from `VqzError`, so the CLI can turn
any of them into one line on stderr and exit code 2. It lives here, in the
lowest layer, because `bitstream` imports nothing of vqz's and everything
else imports `bitstream`.
"""

from __future__ import annotations


class VqzError(Exception):
    """Base of every error vqz raises on purpose (bad input, bad file, bad request)."""


class BitstreamError(VqzError):
    """A .vqz file cannot be read: the subclass says why."""


class NotAVqzFileError(BitstreamError):
    """The magic bytes are wrong."""


class UnsupportedVersionError(BitstreamError):
    """The major format version, or a header flag, is unknown to this reader."""


class TruncatedError(BitstreamError):
    """The data ends before a field, the header or a chunk is complete."""


class ChecksumError(BitstreamError):
    """A CRC32 does not match: the header or a chunk is corrupt."""


class LimitExceededError(BitstreamError):
    """A declared size is larger than the reader accepts."""


class MalformedHeaderError(BitstreamError):
    """A field holds an impossible value, or bytes follow the last chunk."""


class UnsupportedChunkError(BitstreamError):
    """A required chunk kind is unknown to this reader."""
