"""cloud.max_publish_rate's token bucket, on explicit times (no clock, no sleeps)."""

from __future__ import annotations

from gateway.upstream.token_bucket import TokenBucket


def test_rate_burst_and_wait():
    bucket = TokenBucket(100, now=0.0)
    assert bucket.available(0.0) == 100, "a one-second burst"
    for _ in range(100):
        bucket.take()
    assert bucket.available(0.0) == 0
    assert abs(bucket.wait_for_one(0.0) - 0.01) < 1e-9
    assert bucket.available(0.5) == 50
    assert bucket.available(10.0) == 100, "never more than the burst"


def test_zero_means_unlimited_and_slow_rates_still_send():
    assert TokenBucket(0, now=0.0).rate == 0
    slow = TokenBucket(0.5, now=0.0)
    assert slow.available(0.0) == 1
    slow.take()
    assert slow.available(1.0) == 0 and slow.available(2.0) == 1
