"""Reading and writing the .vqz container (format 1.0): the only place that does.

docs/bitstream.md is the byte-level specification of what is here. Reading
checks every field against the data's real length and the reader's `Limits`
before using it, so a hostile file can only raise a `BitstreamError`.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum

from bitstream.errors import (
    ChecksumError,
    LimitExceededError,
    MalformedHeaderError,
    NotAVqzFileError,
    TruncatedError,
    UnsupportedChunkError,
    UnsupportedVersionError,
)

MAGIC = b"\x89VQZ\r\n\x1a\n"
FORMAT_MAJOR = 1
FORMAT_MINOR = 0
PREAMBLE = struct.Struct("<8sBBHI")
CHUNK_ENTRY = struct.Struct("<HII")
DIGEST_BYTES = 8
NO_WEIGHTS = bytes(DIGEST_BYTES)
MAX_CODEC_ID = 64
MAX_PARAMS = 4096
MAX_METADATA_ENTRIES = 1024
CODEC_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]*")


class MediaKind(IntEnum):
    IMAGE = 1
    AUDIO = 2


class ChunkKind(IntEnum):
    DATA = 0x0001  # one tile / segment
    SIDE_INFO = 0x0002  # codec information shared by all tiles

    @staticmethod
    def is_optional(kind: int) -> bool:
        return bool(kind & 0x8000)


_KNOWN_CHUNKS = frozenset(int(k) for k in ChunkKind)


@dataclass(frozen=True)
class Limits:
    """Bounds a reader enforces before allocating anything a file declares."""

    max_pixels: int = 1 << 28
    max_samples: int = 1 << 32
    max_header_bytes: int = 16 << 20
    max_chunks: int = 1 << 20


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    channels: int
    bit_depth: int = 8

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


@dataclass(frozen=True)
class Chunk:
    kind: int
    data: bytes


@dataclass
class Container:
    """Everything a .vqz file holds, decoded from or ready for bytes."""

    codec_id: str
    weights_digest: bytes
    media: ImageInfo | AudioInfo
    params: bytes = b""
    chunks: list[Chunk] = field(default_factory=list)
    metadata: dict[str, bytes] = field(default_factory=dict)
    version: tuple[int, int] = (FORMAT_MAJOR, FORMAT_MINOR)

    @property
    def media_kind(self) -> MediaKind:
        return MediaKind.IMAGE if isinstance(self.media, ImageInfo) else MediaKind.AUDIO

    def data_chunks(self) -> list[bytes]:
        return [c.data for c in self.chunks if c.kind == ChunkKind.DATA]


# --------------------------------------------------------------------------
# writing

_IMAGE = struct.Struct("<IIBB")
_AUDIO = struct.Struct("<IHQ")


def _validate_for_writing(c: Container) -> None:
    if not CODEC_ID_PATTERN.fullmatch(c.codec_id) or len(c.codec_id) > MAX_CODEC_ID:
        raise ValueError(f"invalid codec id {c.codec_id!r}")
    if len(c.weights_digest) != DIGEST_BYTES:
        raise ValueError("weights digest must be 8 bytes")
    if len(c.params) > MAX_PARAMS:
        raise ValueError("codec parameters too long")
    if len(c.metadata) > MAX_METADATA_ENTRIES:
        raise ValueError("too many metadata entries")
    _check_media(c.media, Limits(max_pixels=1 << 62, max_samples=1 << 62), error=ValueError)


def serialize(c: Container) -> bytes:
    """The container as bytes (format 1.0)."""
    _validate_for_writing(c)
    body = bytearray()
    body += bytes([c.media_kind, len(c.codec_id)]) + c.codec_id.encode("ascii") + c.weights_digest
    if isinstance(c.media, ImageInfo):
        body += _IMAGE.pack(c.media.width, c.media.height, c.media.channels, c.media.bit_depth)
    else:
        body += _AUDIO.pack(c.media.sample_rate, c.media.channels, c.media.frames)
    body += struct.pack("<H", len(c.params)) + c.params
    body += struct.pack("<H", len(c.metadata))
    for key, value in c.metadata.items():
        k = key.encode("utf-8")
        if not 1 <= len(k) <= 255:
            raise ValueError(f"metadata key {key!r} must be 1..255 bytes")
        body += bytes([len(k)]) + k + struct.pack("<I", len(value)) + value
    body += struct.pack("<I", len(c.chunks))
    for chunk in c.chunks:
        body += CHUNK_ENTRY.pack(chunk.kind, len(chunk.data), zlib.crc32(chunk.data))
    head = PREAMBLE.pack(MAGIC, FORMAT_MAJOR, FORMAT_MINOR, 0, len(body)) + body
    return b"".join([head, struct.pack("<I", zlib.crc32(head))] + [ch.data for ch in c.chunks])


# --------------------------------------------------------------------------
# reading


class _Reader:
    """Bounds-checked cursor over a bytes object."""

    def __init__(self, data: bytes | memoryview, what: str):
        self.data = memoryview(data)
        self.pos = 0
        self.what = what

    def take(self, n: int, field_name: str) -> bytes:
        if self.pos + n > len(self.data):
            raise TruncatedError(f"{self.what} ends inside field '{field_name}' (offset {self.pos})")
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def unpack(self, fmt: struct.Struct, field_name: str) -> tuple:
        return fmt.unpack(self.take(fmt.size, field_name))


_U8, _U16, _U32 = struct.Struct("<B"), struct.Struct("<H"), struct.Struct("<I")


def _check_media(media: ImageInfo | AudioInfo, limits: Limits, error=MalformedHeaderError) -> None:
    if isinstance(media, ImageInfo):
        if media.width < 1 or media.height < 1:
            raise error(f"image size {media.width}x{media.height} is empty")
        if media.channels not in (1, 3, 4):
            raise error(f"image has {media.channels} channels (1, 3 or 4 allowed)")
        if media.bit_depth not in (8, 16):
            raise error(f"image bit depth {media.bit_depth} (8 or 16 allowed)")
        if media.pixels > limits.max_pixels:
            raise LimitExceededError(
                f"image of {media.width}x{media.height} pixels exceeds the limit of {limits.max_pixels}"
            )
    else:
        if not 1 <= media.sample_rate <= 768000:
            raise error(f"audio sample rate {media.sample_rate} is out of range")
        if not 1 <= media.channels <= 64:
            raise error(f"audio has {media.channels} channels (1..64 allowed)")
        if media.frames * media.channels > limits.max_samples:
            raise LimitExceededError(
                f"audio of {media.frames} frames exceeds the limit of {limits.max_samples} samples"
            )


def _parse_header(data: bytes | memoryview, limits: Limits) -> tuple[Container, list[tuple[int, int, int]], int]:
    r = _Reader(data, "file")
    if len(r.data) < len(MAGIC) or bytes(r.data[: len(MAGIC)]) != MAGIC:
        if len(r.data) < len(MAGIC) and bytes(r.data) == MAGIC[: len(r.data)]:
            raise TruncatedError("file ends inside the magic bytes")
        raise NotAVqzFileError("not a .vqz file (wrong magic bytes)")
    _, major, minor, flags, header_len = r.unpack(PREAMBLE, "preamble")
    if major != FORMAT_MAJOR:
        raise UnsupportedVersionError(
            f"format version {major}.{minor} is not supported (this reader knows {FORMAT_MAJOR}.x)"
        )
    if flags:
        raise UnsupportedVersionError(f"unknown header flags 0x{flags:04x}")
    if header_len > limits.max_header_bytes:
        raise LimitExceededError(f"header of {header_len} bytes exceeds the limit of {limits.max_header_bytes}")
    body = r.take(header_len, "header")
    (stored_crc,) = r.unpack(_U32, "header CRC32")
    if zlib.crc32(bytes(r.data[: PREAMBLE.size + header_len])) != stored_crc:
        raise ChecksumError("header checksum mismatch: the header is corrupt")

    h = _Reader(body, "header")
    kind, id_len = h.unpack(struct.Struct("<BB"), "media kind")
    if kind not in (MediaKind.IMAGE, MediaKind.AUDIO):
        raise MalformedHeaderError(f"unknown media kind {kind}")
    if not 1 <= id_len <= MAX_CODEC_ID:
        raise MalformedHeaderError(f"codec id length {id_len} is out of range")
    raw_id = h.take(id_len, "codec id")
    codec_id = raw_id.decode("ascii", errors="replace")
    if not CODEC_ID_PATTERN.fullmatch(codec_id):
        raise MalformedHeaderError(f"invalid codec id {raw_id!r}")
    digest = h.take(DIGEST_BYTES, "weights digest")
    media: ImageInfo | AudioInfo
    if kind == MediaKind.IMAGE:
        media = ImageInfo(*h.unpack(_IMAGE, "image metadata"))
    else:
        media = AudioInfo(*h.unpack(_AUDIO, "audio metadata"))
    _check_media(media, limits)
    (params_len,) = h.unpack(_U16, "params length")
    if params_len > MAX_PARAMS:
        raise LimitExceededError(f"codec parameters of {params_len} bytes exceed {MAX_PARAMS}")
    params = h.take(params_len, "codec parameters")
    (n_meta,) = h.unpack(_U16, "metadata count")
    if n_meta > MAX_METADATA_ENTRIES:
        raise LimitExceededError(f"{n_meta} metadata entries exceed {MAX_METADATA_ENTRIES}")
    metadata: dict[str, bytes] = {}
    for _ in range(n_meta):
        (key_len,) = h.unpack(_U8, "metadata key length")
        if key_len == 0:
            raise MalformedHeaderError("empty metadata key")
        try:
            key = h.take(key_len, "metadata key").decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedHeaderError("a metadata key is not UTF-8") from None
        if key in metadata:  # a writer keeps a dict: a repeated key is no file vqz wrote
            raise MalformedHeaderError(f"metadata key {key!r} appears twice")
        (value_len,) = h.unpack(_U32, "metadata value length")
        metadata[key] = h.take(value_len, "metadata value")
    (n_chunks,) = h.unpack(_U32, "chunk count")
    if n_chunks > limits.max_chunks:
        raise LimitExceededError(f"{n_chunks} chunks exceed the limit of {limits.max_chunks}")
    if n_chunks * CHUNK_ENTRY.size > len(body) - h.pos:
        raise TruncatedError(f"header ends inside the chunk table ({n_chunks} chunks declared)")
    table = [h.unpack(CHUNK_ENTRY, "chunk table") for _ in range(n_chunks)]
    if h.pos != len(body) and minor <= FORMAT_MINOR:
        raise MalformedHeaderError(f"{len(body) - h.pos} unexpected bytes at the end of the header")
    container = Container(codec_id, digest, media, params, [], metadata, (major, minor))
    return container, table, r.pos


def parse(data: bytes | memoryview, limits: Limits = Limits()) -> Container:
    """Parse and verify a whole .vqz file; unknown optional chunks are dropped."""
    container, table, pos = _parse_header(data, limits)
    view = memoryview(data)
    expected = pos + sum(length for _, length, _ in table)
    if len(view) < expected:
        raise TruncatedError(f"file is {len(view)} bytes, its chunk table needs {expected}")
    if len(view) > expected:
        raise MalformedHeaderError(f"{len(view) - expected} unexpected bytes after the last chunk")
    for index, (kind, length, crc) in enumerate(table):
        payload = bytes(view[pos : pos + length])
        pos += length
        if zlib.crc32(payload) != crc:
            raise ChecksumError(f"chunk {index} (kind 0x{kind:04x}, {length} bytes) is corrupt: checksum mismatch")
        if kind not in _KNOWN_CHUNKS and not ChunkKind.is_optional(kind):
            raise UnsupportedChunkError(f"chunk {index} has unknown required kind 0x{kind:04x}")
        # Unknown optional chunks stay in the list (for `vqz info`); codecs only
        # ever ask for the kinds they know.
        container.chunks.append(Chunk(kind, payload))
    return container
