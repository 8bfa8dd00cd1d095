"""The slow-flash scenario keeps working: one short phase of each storm, report fields there.

Nothing about speed is asserted (the before and after are the bench's report, not a test's);
this proves the shim is preloaded into the daemon, the storming child is served and counted, and
the table and the plot are written.
"""

from __future__ import annotations

import importlib.util
import json

from bench.__main__ import main


def test_one_short_phase_of_each_storm(tmp_path):
    out = tmp_path / "out"
    assert main(["run", "--scenarios", "slowflash", "--rounds", "1", "--flush-ms", "0",
                 "--storms", "twin", "routed", "--slowflash-secs", "1", "--out", str(out)]) == 0
    runs = json.loads((out / "report.json").read_text())["slowflash"]["0"]
    assert set(runs) == {"twin-online", "twin-offline", "routed-online", "routed-offline"}
    for name, (figures,) in runs.items():
        assert "error" not in figures, (name, figures)
        assert figures["bystander_sent"] == 100, name
        assert figures["storm_per_sec"] > 0, name
        assert figures["flushes_per_sec"] > 0, f"{name}: the shim counted the daemon's flushes"
    table = (out / "report.md").read_text()
    assert "| 0 | twin | offline |" in table and "### Slow flash" in table
    if importlib.util.find_spec("matplotlib") is not None:  # the bench extra; the report
        assert (out / "slowflash.png").stat().st_size > 0  # is written without it
