"""The .vqz container: round trips, and one documented error per kind of damage."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitstream import (
    AudioInfo,
    BitstreamError,
    ChecksumError,
    Chunk,
    Container,
    ImageInfo,
    LimitExceededError,
    Limits,
    MalformedHeaderError,
    NotAVqzFileError,
    TruncatedError,
    UnsupportedChunkError,
    UnsupportedVersionError,
    parse,
    serialize,
)
from bitstream.container import MAGIC, PREAMBLE


def _sample(**changes) -> Container:
    fields = dict(
        codec_id="lossless-delta",
        weights_digest=bytes(range(8)),
        media=ImageInfo(640, 480, 3, 8),
        params=b"\x01\x02",
        chunks=[Chunk(1, b"hello"), Chunk(1, b""), Chunk(2, b"side")],
        metadata={"icc": b"profile", "note": b"x"},
    )
    fields.update(changes)
    return Container(**fields)


def _rebuild(data: bytes, *, minor: int | None = None, flags: int | None = None, extra_header: bytes = b"") -> bytes:
    """Re-emit a file with changed preamble fields / extra header bytes and a valid header CRC."""
    magic, major, old_minor, old_flags, header_len = PREAMBLE.unpack_from(data)
    body = data[PREAMBLE.size : PREAMBLE.size + header_len] + extra_header
    rest = data[PREAMBLE.size + header_len + 4 :]
    head = (
        PREAMBLE.pack(
            magic, major, old_minor if minor is None else minor, old_flags if flags is None else flags, len(body)
        )
        + body
    )
    return head + struct.pack("<I", zlib.crc32(head)) + rest


media_strategy = st.one_of(
    st.builds(
        ImageInfo,
        st.integers(1, 1 << 14),
        st.integers(1, 1 << 14),
        st.sampled_from([1, 3, 4]),
        st.sampled_from([8, 16]),
    ),
    st.builds(AudioInfo, st.integers(1, 768000), st.integers(1, 64), st.integers(0, 1 << 26)),
)


@settings(max_examples=200, deadline=None)
@given(
    codec_id=st.from_regex(r"[a-z0-9][a-z0-9._-]{0,63}", fullmatch=True),
    digest=st.binary(min_size=8, max_size=8),
    media=media_strategy,
    params=st.binary(max_size=64),
    chunks=st.lists(st.builds(Chunk, st.sampled_from([1, 2, 0x8001, 0xFFFF]), st.binary(max_size=64)), max_size=8),
    metadata=st.dictionaries(
        st.text(min_size=1, max_size=20).filter(lambda k: len(k.encode()) <= 255), st.binary(max_size=32), max_size=4
    ),
)
def test_round_trip(codec_id, digest, media, params, chunks, metadata):
    c = Container(codec_id, digest, media, params, chunks, metadata)
    back = parse(serialize(c))
    assert back == c


def test_wrong_magic():
    data = bytearray(serialize(_sample()))
    data[1] ^= 0x20
    with pytest.raises(NotAVqzFileError):
        parse(bytes(data))
    with pytest.raises(NotAVqzFileError):
        parse(b"\x89PNG\r\n\x1a\n" + bytes(40))
    with pytest.raises(NotAVqzFileError):
        parse(MAGIC.replace(b"\r\n", b"\n") + bytes(40))  # line endings converted in transfer


def test_every_truncation_is_reported():
    data = serialize(_sample())
    for n in range(len(data)):
        with pytest.raises(TruncatedError):
            parse(data[:n])


def test_trailing_bytes():
    with pytest.raises(MalformedHeaderError, match="after the last chunk"):
        parse(serialize(_sample()) + b"\0")


def test_unknown_major_version_and_flags():
    data = bytearray(serialize(_sample()))
    data[8] = 2
    with pytest.raises(UnsupportedVersionError, match="2.0"):
        parse(bytes(data))
    with pytest.raises(UnsupportedVersionError, match="flags"):
        parse(_rebuild(serialize(_sample()), flags=1))


def test_header_and_chunk_checksums():
    data = serialize(_sample())
    flipped = bytearray(data)
    flipped[PREAMBLE.size + 3] ^= 1  # inside the header body
    with pytest.raises(ChecksumError, match="header"):
        parse(bytes(flipped))
    flipped = bytearray(data)
    flipped[-1] ^= 0x80  # last byte of the last chunk ("side")
    with pytest.raises(ChecksumError, match="chunk 2"):
        parse(bytes(flipped))


def test_newer_minor_version_is_read_and_its_additions_skipped():
    c = _sample(chunks=[Chunk(1, b"data"), Chunk(0x8123, b"future optional chunk")])
    newer = _rebuild(serialize(c), minor=7, extra_header=b"future header field")
    back = parse(newer)
    assert back.version == (1, 7)
    assert back.data_chunks() == [b"data"]
    # the same extra bytes in a 1.0 file are an error
    with pytest.raises(MalformedHeaderError):
        parse(_rebuild(serialize(c), extra_header=b"junk"))


def test_unknown_required_chunk():
    with pytest.raises(UnsupportedChunkError, match="0x0042"):
        parse(serialize(_sample(chunks=[Chunk(0x42, b"x")])))


def test_limits_are_checked_before_allocation():
    data = serialize(_sample(media=ImageInfo(100_000, 100_000, 3)))
    with pytest.raises(LimitExceededError, match="100000x100000"):
        parse(data)
    assert parse(data, Limits(max_pixels=10**10)).media.width == 100_000
    with pytest.raises(LimitExceededError, match="chunks"):
        parse(serialize(_sample()), Limits(max_chunks=2))
    with pytest.raises(LimitExceededError, match="header"):
        parse(serialize(_sample()), Limits(max_header_bytes=10))
    audio = serialize(_sample(media=AudioInfo(48000, 2, 1 << 40)))
    with pytest.raises(LimitExceededError, match="samples"):
        parse(audio)


def test_absurd_chunk_length_is_truncation_not_allocation():
    c = _sample(chunks=[Chunk(1, b"abc")])
    data = bytearray(serialize(c))
    # patch the chunk length to 4 GiB - 1 and fix the header CRC: the file is now "truncated"
    body_len = struct.unpack_from("<I", data, 12)[0]
    entry_at = PREAMBLE.size + body_len - 10
    struct.pack_into("<I", data, entry_at + 2, 0xFFFFFFFF)
    head = bytes(data[: PREAMBLE.size + body_len])
    struct.pack_into("<I", data, PREAMBLE.size + body_len, zlib.crc32(head))
    with pytest.raises(TruncatedError):
        parse(bytes(data))


@pytest.mark.parametrize("key, message", [(b"icc", "appears twice"), (b"\xff\xfe\xfd", "not UTF-8")])
def test_metadata_keys_are_utf8_and_distinct(key, message):
    data = serialize(_sample(metadata={"icc": b"profile", "abc": b"x"}))
    head_len = PREAMBLE.size + struct.unpack_from("<I", data, 12)[0]
    forged = data[:head_len].replace(b"\x03abc", b"\x03" + key)  # same length: only the CRC changes
    assert forged != data[:head_len]
    forged += struct.pack("<I", zlib.crc32(forged)) + data[head_len + 4 :]
    with pytest.raises(MalformedHeaderError, match=message):
        parse(forged)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(codec_id="Bad Id"), "codec id"),
        (dict(weights_digest=b"short"), "digest"),
        (dict(media=ImageInfo(0, 5, 3)), "empty"),
        (dict(media=ImageInfo(5, 5, 2)), "channels"),
        (dict(params=bytes(5000)), "parameters"),
    ],
)
def test_writer_refuses_invalid_containers(changes, message):
    with pytest.raises(ValueError, match=message):
        serialize(_sample(**changes))


def test_every_error_is_a_bitstream_error():
    for cls in (
        NotAVqzFileError,
        UnsupportedVersionError,
        TruncatedError,
        ChecksumError,
        LimitExceededError,
        MalformedHeaderError,
        UnsupportedChunkError,
    ):
        assert issubclass(cls, BitstreamError)
