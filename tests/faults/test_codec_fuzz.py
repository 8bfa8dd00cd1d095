"""Hypothesis fuzzer on the codec: any bytes, cut anywhere, give packets or a ProtocolError -
never another exception, never a buffer past the limit, and the same result however cut."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.mqtt import codec
from gateway.mqtt.codec import Connect, PingReq, Publish, Subscribe

LIMIT = 4096
SEEDS = [
    codec.encode(Connect("dev", username="u", password=b"p")),
    codec.encode(Publish("devices/dev/messages/events/a=1", b"x" * 40, qos=1, packet_id=9)),
    codec.encode(Subscribe(3, (("devices/dev/messages/devicebound/#", 1),))),
    codec.encode(PingReq()),
]


def _decode(data: bytes, cuts: list[int]) -> tuple[list, str]:
    decoder = codec.Decoder(LIMIT)
    out: list = []
    pos = 0
    try:
        for cut in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
            out += decoder.feed(data[pos:cut])
            pos = cut
            assert len(decoder._buf) <= LIMIT, "buffered past the packet limit"
    except codec.ProtocolError:
        return out, "refused"  # the subclass may depend on the cut (too large is seen early)
    return out, ""


def _mutate(seed: bytes, edits: list[tuple[int, int]]) -> bytes:
    data = bytearray(seed)
    for where, value in edits:
        data[where % len(data)] = value
    return bytes(data)


stream = st.one_of(
    st.binary(max_size=300),
    st.builds(_mutate, st.sampled_from(SEEDS),
              st.lists(st.tuples(st.integers(0, 500), st.integers(0, 255)), max_size=6)),
    st.lists(st.sampled_from(SEEDS), max_size=4).map(b"".join),
)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream, st.lists(st.integers(0, 10_000), max_size=8))
def test_decoder_never_crashes_and_is_cut_independent(data, cuts):
    whole = _decode(data, [])
    assert _decode(data, cuts) == whole
    for packet in whole[0]:  # what decodes re-encodes to a packet that decodes the same
        assert codec.Decoder(LIMIT).feed(codec.encode(packet)) == [packet]
