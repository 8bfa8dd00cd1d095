"""Issue 19: the web console in a real headless Chromium, against a real mosquitto and real
gatewayd processes: the fleet going offline live, a child added from the page that then
authenticates, a desired edit that reaches it, and the CLI's refusals on the page with nothing
written. Each page is photographed into docs/images/console/ (shown in docs/console.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gateway.operator import Operator
from tests.support.console import Console, chromium, needs_chromium, screenshot
from tests.support.gatewayd import HUB
from tests.support.hub_child import HubChild

pytestmark = needs_chromium

ROWS = """return Array.from(document.querySelectorAll('table.fleet tbody tr[data-gateway]'))
  .map(r => [r.dataset.gateway, r.className, r.querySelector('.state').textContent]);"""
LEDGER = """const cells = document.querySelectorAll('#ledger td[data-count]');
  return cells.length ? Object.fromEntries(Array.from(cells)
    .map(c => [c.dataset.count, c.textContent])) : null;"""
TWIN = """return Object.fromEntries(Array.from(document.querySelectorAll('table.twin tr[data-key]'))
  .map(r => [r.dataset.key, [r.cells[1].textContent, r.cells[2].textContent]]));"""


@pytest.fixture
def console(cloud):
    running = Console(cloud.url, "--hub-hostname", HUB, "--gateway-host", "127.0.0.1")
    yield running
    running.stop()


@pytest.fixture
def browser(tmp_path):
    from selenium.common.exceptions import (
        JavascriptException,
        NoSuchElementException,
        StaleElementReferenceException,
        TimeoutException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium(tmp_path / "chromium-profile")
    def until(condition, timeout: float = 30, what: str = ""):
        try:
            return WebDriverWait(driver, timeout, ignored_exceptions=(
                NoSuchElementException, StaleElementReferenceException, JavascriptException,
            )).until(condition)
        except TimeoutException:
            main = driver.find_element("tag name", "main").text
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition} "
                                 f"on {driver.current_url}; the page shows:\n{main}") from None

    driver.until = until
    yield driver
    driver.quit()


@pytest.fixture
def op(cloud):
    with Operator.connect(cloud.url, hub_hostname=HUB) as operator:
        yield operator


def by_id(driver, element_id: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def live_text(driver, element_id: str) -> str:
    """The text of a live part of the page, read in one script: the page's own refresh may
    replace the element between a find and a read."""
    return driver.execute_script(
        "const e = document.getElementById(arguments[0]); return e ? e.innerText : '';",
        element_id)


def fill(driver, element_id: str, text: str) -> None:
    """Set a field's value at once (send_keys types a 40 KiB value key by key)."""
    driver.execute_script("arguments[0].value = arguments[1];", by_id(driver, element_id), text)


def submit(driver, button_id: str) -> None:
    """Click and wait for the page the form leads to: the old document carries a mark that the
    new one does not (an element's staleness can be asked about mid-navigation, which chromedriver
    answers with an error)."""
    driver.execute_script("window.beforeSubmit = true;")
    by_id(driver, button_id).click()
    driver.until(lambda d: d.execute_script(
        "return !window.beforeSubmit && document.readyState === 'complete';"),
        what=f"the page after {button_id}")


def banner(driver, kind: str) -> str:
    """The text of the page's `done`, `error` or `result` line; a missing one shows the others."""
    found = driver.find_elements("id", kind)
    if not found:
        shown = [e.text for e in driver.find_elements("css selector", ".banner")]
        raise AssertionError(f"no {kind} line on {driver.current_url}; the page shows {shown}")
    return found[0].text


def key_of(conn_str: str) -> str:
    return dict(part.split("=", 1) for part in conn_str.split(";"))["SharedAccessKey"]


def test_fleet_lists_two_gateways_and_shows_one_going_offline(cloud, gateways, console, browser):
    edge1 = gateways("edge-1", cloud_url=cloud.url, gateway_id="edge-1")
    edge2 = gateways("edge-2", cloud_url=cloud.url, gateway_id="edge-2")
    for gw in (edge1, edge2):
        gw.start()
        gw.wait_status(lambda s: s["uplink"]["state"] == "online", what="online")
    browser.get(console.url + "/fleet")
    browser.until(lambda d: sorted((g, c) for g, c, _ in d.execute_script(ROWS)) == [
        ("edge-1", "online"), ("edge-2", "online")])

    edge2.kill()  # its last will says offline; the page learns it by refreshing itself
    rows = browser.until(lambda d: (r := d.execute_script(ROWS)) and r[0][:2] == [
        "edge-2", "offline"] and r)
    assert rows[1][:2] == ["edge-1", "online"], "worst first: the offline gateway on top"
    assert "1 offline" in live_text(browser, "fleet")
    screenshot(browser, "fleet")


def test_a_child_added_on_the_page_authenticates_and_gets_the_operator_s_changes(
        cloud, gateways, console, browser, op):
    gw = gateways("edge-1", cloud_url=cloud.url, gateway_id="edge-1",
                  cloud={"ledger_interval_secs": 0.5})
    gw.start()
    gw.wait_status(lambda s: s["uplink"]["state"] == "online", what="online")

    browser.get(console.url + "/gateways/edge-1")
    fill(browser, "document", json.dumps({"modules": {"filter": {
        "type": "process", "status": "stopped", "settings": {"command": ["/bin/true"]}}}}))
    submit(browser, "deploy")
    assert "deployment version 0 published" in banner(browser, "done")
    submit(browser, "add-children")
    screenshot(browser, "add-children")
    fill(browser, "devices", "dev-1")
    submit(browser, "add")
    conn = browser.find_element("css selector", "code.secret[data-device='dev-1']").text
    assert conn.startswith(f"HostName={HUB};DeviceId=dev-1;SharedAccessKey=")
    assert conn.endswith(";GatewayHostName=127.0.0.1")
    screenshot(browser, "added")

    gw.wait_status(lambda s: s["registry_version"] == 1, what="the registry from the page")
    child = HubChild("dev-1", key_of(conn), gw.plain_port)
    assert child.connect() == 0, "the connection string from the page authenticates"
    child.subscribe_all()

    # the loss ledger: judged from the first settlement the console hears, then every seq
    browser.get(console.url + "/gateways/edge-1")
    child.wait_acked([child.send(i).mid for i in range(3)])
    first = browser.until(lambda d: d.execute_script(LEDGER), what="a first settlement")
    child.wait_acked([child.send(i).mid for i in range(3, 8)])
    want = int(first["delivered"]) + 5  # the first three too, if issued after that settlement
    counts = browser.until(lambda d: (c := d.execute_script(LEDGER))
                           and int(c["delivered"]) >= want and c["pending"] == "0" and c,
                           what="five more messages settled")
    assert counts["unaccounted"] == "0" and counts["issued"] == counts["delivered"]

    browser.get(console.url + "/devices/dev-1")
    fill(browser, "desired", '{"rate": 7, "mode": "eco"}')
    submit(browser, "set-desired")
    assert banner(browser, "done") == "desired version 1 published"
    child.wait(lambda: child.messages("$iothub/twin/PATCH/properties/desired/"),
               what="the desired patch from the page")
    _, patch = child.messages("$iothub/twin/PATCH/properties/desired/")[0]
    assert json.loads(patch) == {"rate": 7, "mode": "eco", "$version": 1}
    assert child.patch_reported({"rate": 7, "firmware": "1.4.2"})[0] == 204
    twin = browser.until(lambda d: (t := d.execute_script(TWIN)).get("firmware") and t)
    assert twin["rate"] == ["7", "7"] and twin["mode"] == ["\"eco\"", ""]

    fill(browser, "method", "blink")
    fill(browser, "payload", '{"n": 2}')
    submit(browser, "invoke")
    assert banner(browser, "result") == (
        'status 200: {"echo": {"n": 2}, "method": "blink"}')
    fill(browser, "c2d-payload", "hello")
    fill(browser, "c2d-properties", "k=v")
    submit(browser, "send")
    assert banner(browser, "done") == "message sent to dev-1"
    child.wait(lambda: child.messages("devices/dev-1/messages/devicebound/"), what="C2D")
    topic, payload = child.messages("devices/dev-1/messages/devicebound/")[0]
    assert payload == b"hello" and "k=v" in topic
    screenshot(browser, "device")

    submit(browser, "disable")
    assert banner(browser, "done") == "disable: dev-1 (registry version 2)"
    gw.wait_status(lambda s: "dev-1" not in s["children"], what="dev-1 disconnected")
    child.close()

    gw.wait_status(lambda s: s["modules"].get("deployment_version") == 0, what="deployment")
    browser.get(console.url + "/gateways/edge-1")
    browser.until(lambda d: "stopped" in live_text(d, "modules"), what="the module stopped")
    assert "disabled" in live_text(browser, "children")
    screenshot(browser, "gateway")
    browser.get(console.url + "/devices/edge-1/modules/filter")
    assert by_id(browser, "parent").text == "A module of edge-1."
    fill(browser, "desired", '{"threshold": 5}')
    submit(browser, "set-desired")
    assert banner(browser, "done") == "desired version 1 published"
    assert op.twin("edge-1/filter").desired == {"threshold": 5, "$version": 1}
    screenshot(browser, "module")


def cli_refusal(cloud, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "gateway.cli.gatewayctl", *args,
                           "--cloud", cloud.url], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    return done.stderr.strip().removeprefix("gatewayctl: ")


def test_the_page_refuses_what_the_cli_refuses_in_its_words_and_writes_nothing(
        cloud, console, browser, op):
    op.add_children("edge-1", ["dev-1"])
    op.add_children("edge-2", ["dev-2"])
    before = op.children("edge-2")

    browser.get(console.url + "/gateways/edge-2/add")
    fill(browser, "devices", "dev-1")
    submit(browser, "add")
    words = cli_refusal(cloud, "children", "add", "edge-2", "dev-1", "--hub-hostname", HUB)
    assert words == ("dev-1 already has a parent, edge-1; remove it there first "
                     "(gatewayctl children remove edge-1 dev-1)")
    assert banner(browser, "error") == words
    assert by_id(browser, "devices").get_attribute("value") == "dev-1", "the input is kept"
    screenshot(browser, "second-parent-refused")
    assert op.children("edge-2") == before and op.parent_of("dev-1") == "edge-1"

    browser.get(console.url + "/devices/dev-1")
    fill(browser, "desired", "{nope")
    submit(browser, "set-desired")
    assert banner(browser, "error") == cli_refusal(
        cloud, "twin", "set", "dev-1", "--desired", "{nope")
    assert banner(browser, "error").startswith("--desired: not valid JSON")
    fill(browser, "desired", json.dumps({"blob": "x" * 40000}))
    submit(browser, "set-desired")
    assert "over the 32768-byte limit; nothing written" in banner(browser, "error")
    fill(browser, "c2d-payload", "x")
    fill(browser, "c2d-properties", "novalue")
    submit(browser, "send")
    assert banner(browser, "error") == "--property: expected key=value, got 'novalue'"
    assert by_id(browser, "payload").get_attribute("value") == "null", "each form keeps its own"
    screenshot(browser, "bad-input-refused")
    assert op.twin("dev-1").desired is None, "nothing written"

    browser.get(console.url + "/devices/ghost")
    fill(browser, "desired", '{"a": 1}')
    submit(browser, "set-desired")
    assert banner(browser, "error") == cli_refusal(
        cloud, "twin", "set", "ghost", "--desired", '{"a": 1}')
    assert banner(browser, "error").startswith("unknown device ghost")
    assert op.twin("ghost").desired is None

    browser.get(console.url + "/gateways/edge-1")
    for ttl, words in (("0", "--ttl: expected 1..2147483647 seconds, got 0"),
                       ("soon", "--ttl: expected a whole number, got 'soon'")):
        fill(browser, "ttl", ttl)
        submit(browser, "set-ttl")
        assert banner(browser, "error") == words
    assert op.settings("edge-1").desired is None, "nothing written"
