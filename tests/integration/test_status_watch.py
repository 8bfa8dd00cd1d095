"""Issue 5 done-when 4: `gatewayctl status --watch` in a terminal shows a draining backlog with a
progress bar, its rate and the time left; and the one-shot table has the planning figures."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys

from tests.support.clients import Child, new_key
from tests.support.offline import cut_off_gateway
from tests.support.wait import wait_until

BAR = re.compile(r"draining  \[(#*)(\.*)\] +(\d+)%  (\d+) msg/s, (\d+) left, (\S+) to go")


def test_watch_shows_a_progress_bar_while_the_backlog_drains(cloud, gateways):
    key = new_key()
    # paced, so the drain lasts long enough for a terminal to see it progress (~6 s)
    gw, _ = cut_off_gateway(cloud, gateways, {"w": key}, cloud={"max_publish_rate": 5000})
    child = Child("w", key, gw.plain_port)
    child.client.max_inflight_messages_set(500)
    assert child.connect() == 0
    child.wait_acked([child.send(i, size=200).mid for i in range(30000)], timeout=180)

    table = gw.ctl("status").stdout
    for row in ("uplink", "backlog", "rates", "drain", "disk", "expired", "registry", "written"):
        assert re.search(rf"^{row} ", table, re.M), f"no {row} row in:\n{table}"
    assert "30000 msgs" in table and "(p9: 30000)" in table

    main, secondary = pty.openpty()
    watch = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli.gatewayctl", "status", "--watch", "--interval",
         "0.25", "--count", "400", "--config", str(gw.config)],
        stdout=secondary, stderr=secondary, close_fds=True)
    os.close(secondary)
    cloud.start()
    screen = bytearray()

    def bars_so_far() -> list:
        ready, _, _ = select.select([main], [], [], 1.0)
        if ready:
            try:
                screen.extend(os.read(main, 65536))
            except OSError:  # the watch ended: what it drew is all there is
                raise AssertionError("no progress bar in:\n"
                                     + screen.decode(errors="replace")[-2000:]) from None
        return BAR.findall(screen.decode(errors="replace"))

    bars = wait_until(bars_so_far, lambda found: len(found) >= 2, timeout=60, interval=0,
                      what="two progress bars drawn",
                      show=lambda _: screen.decode(errors="replace")[-2000:])
    watch.kill()
    watch.wait()
    os.close(main)
    assert len(bars) >= 2, f"no progress bar in:\n{screen.decode(errors='replace')[-2000:]}"
    filled, empty, pct, rate, left, eta = bars[-1]
    assert len(filled) + len(empty) == 30 and int(rate) > 0
    assert 0 < int(left) < 30000 and 0 <= int(pct) <= 100
    assert b"\x1b[2J" in bytes(screen), "the screen is redrawn in place"
    print(f"progress bar: {bars[-1]}")
    child.close()
