"""gatewayd: an edge hub for Raspberry Pi IoT gateways (README.md, docs/)."""

__version__ = "0.1.0"  # setup.cfg reads it; the status and the reported twin report it
