"""The web console: the fleet, a gateway, a child or module, and adding children, in a browser.

`gatewayctl console` serves it (gateway/cli/ctl_console.py). It stands on gateway.operator's
Operator, as gatewayctl's cloud commands do, so the rules and their words are the same, and it
keeps nothing of its own: every page is read from the cloud broker when it is asked for.
"""
