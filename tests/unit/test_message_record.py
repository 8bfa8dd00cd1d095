"""Stored records: version 3 deflates payloads that shrink, and still reads versions 1 and 2 (a
gateway upgraded with a backlog on its card)."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.message import DEFAULT_PRIORITY, Message, RecordError, decode_record, encode_record

JSON = b'{"temp": 21.5, "hum": 40.2, "status": "ok", "readings": [1, 2, 3, 4, 5, 6, 7, 8]}' * 2


def test_compressible_payload_is_stored_smaller_and_reads_back():
    msg = Message("dev", 1, 2, "a=1", JSON, 4)
    record = encode_record(msg)
    assert len(record) < len(JSON), "deflated"
    assert decode_record(record) == msg


def test_incompressible_payload_is_stored_as_it_is():
    noise = os.urandom(300)
    record = encode_record(Message("dev", 1, 2, "", noise))
    assert record.endswith(noise)
    assert decode_record(record).payload == noise


def test_versions_1_and_2_still_read():
    head = struct.Struct(">BQQHHI")
    v1 = head.pack(1, 5, 6, 3, 0, 2) + b"devhi"
    v2 = head.pack(2, 5, 6, 3, 0, 2) + b"\x02devhi"
    assert decode_record(v1) == Message("dev", 5, 6, "", b"hi", DEFAULT_PRIORITY)
    assert decode_record(v2) == Message("dev", 5, 6, "", b"hi", 2)


def test_a_damaged_deflated_payload_is_a_record_error():
    record = bytearray(encode_record(Message("dev", 1, 2, "", JSON)))
    record[-5:] = b"\xff" * 5
    with pytest.raises(RecordError):
        decode_record(bytes(record))


@given(st.binary(max_size=600), st.text(max_size=20), st.integers(0, 9))
def test_any_message_round_trips(payload, props, priority):
    msg = Message("d", 1, 2, props, payload, priority)
    assert decode_record(encode_record(msg)) == msg
