#!/bin/bash
# Runs inside the test VM, under its real systemd, as gwtest.service. Each check prints one
# "GWTEST <name> PASS|FAIL <detail>" line on the serial console; the host test reads them.
set -u
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "GWTEST $*" > /dev/ttyS0; }
check() {
    local name=$1; shift
    if "$@" > /tmp/gwtest.out 2>&1; then say "$name PASS"
    else say "$name FAIL $(tail -c 400 /tmp/gwtest.out | tr '\n' ' ')"; fi
}
wait_for() {  # SECONDS COMMAND...: poll a condition, a tenth of a second apart
    local tries=$(( $1 * 10 )); shift
    for _ in $(seq 1 "$tries"); do "$@" > /dev/null 2>&1 && return 0; sleep 0.1; done
    "$@"
}
status_json() { gatewayctl status --json; }
jq_py() { /opt/gatewayd/bin/python -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
backlog() { status_json | jq_py 'd["backlog"]["messages"]'; }
main_pid() { systemctl show -p MainPID --value gatewayd; }
module_pid() { systemctl show -p MainPID --value gatewayd-module@ticker.service; }
export -f status_json jq_py backlog main_pid module_pid
CONF=/etc/gatewayd/gatewayd.toml

say "booted $(uname -r) systemd $(systemctl --version | head -1 | cut -d' ' -f2)"
check install dpkg -i /root/debs/gatewayd_0.1.0_amd64.deb
check active wait_for 60 systemctl is-active --quiet gatewayd
check status-line bash -c 'systemctl status gatewayd --no-pager | grep -q "Status: \"uplink"'
check journal-ready bash -c 'journalctl -u gatewayd --no-pager | grep -q "ready: listening on"'
check journal-fields bash -c 'journalctl -u gatewayd -o verbose --no-pager | grep -q "GATEWAY_ID=edge-gateway"'
check ca-made test -s /etc/gatewayd/ca.pem -a -s /etc/gatewayd/gateway.pem
check key-private bash -c '[ "$(stat -c %a /etc/gatewayd/ca.key)" = 600 ]'

sed -i 's|^url = ""|url = "mqtt://127.0.0.1:1883"|; s|^port = 8883|port = 8883\nplain_port = 1884|' $CONF
check restart systemctl restart gatewayd
check registry /opt/gatewayd/bin/python /root/child.py registry
check online wait_for 60 bash -c 'status_json | jq_py "d[\"uplink\"][\"state\"]==\"online\" and d[\"registry_version\"]==1" | grep -q True'

sed -i 's|^time_to_live_secs = 7200|time_to_live_secs = 3600|' $CONF
check reload systemctl reload gatewayd
check reload-journal wait_for 20 bash -c 'journalctl -u gatewayd --no-pager | grep -q "reload: applied storage.time_to_live_secs"'
check reload-applied bash -c 'status_json | jq_py "d[\"time_to_live_secs\"]" | grep -qx 3600'

check cloud-down systemctl stop mosquitto
check offline wait_for 30 bash -c 'status_json | jq_py "d[\"uplink\"][\"state\"]" | grep -vq online'
check send-200 /opt/gatewayd/bin/python /root/child.py send 200
check backlog-200 bash -c '[ "$(backlog)" = 200 ]'

pid=$(main_pid)
kill -STOP "$pid"
check watchdog-restart wait_for 90 bash -c "[ \"\$(systemctl show -p MainPID --value gatewayd)\" != $pid ] && systemctl is-active --quiet gatewayd"
check watchdog-journal bash -c 'journalctl -u gatewayd --no-pager | grep -qi "watchdog timeout"'
check backlog-after-watchdog wait_for 30 bash -c '[ "$(backlog)" = 200 ]'
say "security $(systemd-analyze security gatewayd --no-pager 2>/dev/null | tail -1)"

check stop systemctl stop gatewayd
check store-clean /opt/gatewayd/bin/python -c '
from gateway.storage.store import Store
from gateway.upstream.outbox import Outbox
s = Store("/var/lib/gatewayd"); o = Outbox(s)
assert o.stats.count == 200, o.stats.count
o.close(); s.close()'
check start-again systemctl start gatewayd

check upgrade dpkg -i /root/debs/gatewayd_0.1.1_amd64.deb
check upgraded-version bash -c 'dpkg-query -W -f="\${Version}" gatewayd | grep -qx 0.1.1'
check upgraded-active wait_for 60 systemctl is-active --quiet gatewayd
check config-kept grep -q 'mqtt://127.0.0.1:1883' $CONF
check backlog-kept wait_for 30 bash -c '[ "$(backlog)" = 200 ]'
check cloud-back systemctl start mosquitto
check drained wait_for 60 bash -c '[ "$(backlog)" = 0 ]'

# Modules as systemd units (issue 14): the shipped configuration has the workload socket on, the
# deployment comes retained from the cloud, gatewayd (user gatewayd) starts the unit through
# polkit, the module signs over the workload API, and the unit outlives a restart of gatewayd.
check module-conf grep -qx 'workload_socket = "/run/gatewayd/workload.sock"' $CONF
cat > /root/deploy.json <<'JSON'
{"modules": {"ticker": {"version": "1", "type": "process", "status": "running",
  "restartPolicy": "always",
  "settings": {"command": ["/usr/bin/python3", "/usr/local/lib/gwtest/module.py"]}}}}
JSON
check deploy gatewayctl deploy edge-gateway /root/deploy.json --config $CONF
check module-active wait_for 60 systemctl is-active --quiet gatewayd-module@ticker.service
check module-user bash -c '[ "$(stat -c %U /proc/"$(module_pid)")" = gatewayd-module ]'
check module-journal wait_for 30 bash -c 'journalctl -u gatewayd-module@ticker --no-pager | grep -q " gatewayd-module@ticker\[[0-9]*\]: tick$"'
check module-signed bash -c 'journalctl -u gatewayd-module@ticker --no-pager | grep -q ": sign 200$"'
say "module journal: $(journalctl -u gatewayd-module@ticker --no-pager -n 1 | tail -1); /run/gatewayd $(stat -c '%a %U' /run/gatewayd), workload.sock $(stat -c '%a' /run/gatewayd/workload.sock)"
say "module security $(systemd-analyze security gatewayd-module@ticker.service --no-pager 2>/dev/null | tail -1)"
check module-status wait_for 30 bash -c 'gatewayctl status | grep -Eq "ticker +running"'
check workload-403 bash -c 'out=$(runuser -u gatewayd-module -- env IOTEDGE_WORKLOADURI=unix:///run/gatewayd/workload.sock IOTEDGE_MODULEID=ticker IOTEDGE_MODULEGENERATIONID=x python3 /usr/local/lib/gwtest/module.py sign); echo "$out"; [ "$out" = "sign 403" ]'
check control-private bash -c '! runuser -u gatewayd-module -- python3 -c "import socket; socket.socket(socket.AF_UNIX).connect(\"/var/lib/gatewayd/control.sock\")"'
mpid=$(module_pid)
check module-restart-gatewayd systemctl restart gatewayd
check module-adopted wait_for 60 bash -c 'journalctl -u gatewayd --no-pager | grep -q "module ticker: adopted the running"'
check module-same-pid bash -c "[ \"\$(module_pid)\" = $mpid ] && systemctl is-active --quiet gatewayd-module@ticker.service"
check module-status-after wait_for 30 bash -c 'status_json | jq_py "d[\"modules\"][\"modules\"][\"ticker\"][\"runtimeStatus\"]" | grep -qx running'
check polkit-refused bash -c 'out=$(runuser -u gatewayd -- systemctl --no-ask-password stop mosquitto.service 2>&1); echo "$out"; systemctl is-active --quiet mosquitto && echo "$out" | grep -Eqi "access denied|authentication required"'
say "polkit: $(head -c 200 /tmp/gwtest.out | tr '\n' ' ')"

check remove dpkg -r gatewayd
check removed-stopped bash -c '! systemctl is-active --quiet gatewayd'
check module-removed bash -c '! systemctl is-active --quiet gatewayd-module@ticker.service'
check store-stays test -d /var/lib/gatewayd
check purge dpkg -P gatewayd
check purged bash -c '! test -e /var/lib/gatewayd'
say "done"
systemctl poweroff
