"""The management web page in a real browser (headless Chromium): log in with the broker's
users, see a queue appear after a publish, publish and get messages through the forms, page
through a large list, and manage users, vhosts, permissions, limits and policies in the
Admin section. With SCREENSHOT_DIR set, it also saves the overview and a queue
page while `hare perf` loads the broker (how docs/screenshots/ were made)."""
import json
import os
import subprocess

import pytest

from browser import Browser, chromium_binary
from conftest import HARE_BIN, module_hare, wait_for
from helpers import free_ports
from stream_client import OK, Raw

pytestmark = pytest.mark.skipif(
    chromium_binary() is None and not os.environ.get("CI"), reason="chromium not installed (test.sh installs it)"
)


STREAM_PORT = free_ports(1)[0]
hare = module_hare("--stats-interval", "500", "--stream-port", str(STREAM_PORT))


@pytest.fixture(scope="module")
def browser():
    b = Browser()
    yield b
    b.close()


def js(s):
    return json.dumps(s)


def login(browser, hare, user, password):
    """Opens the page afresh (a login kept in the tab from an earlier test is dropped)."""
    browser.goto(f"http://127.0.0.1:{hare.http_port}/")
    browser.eval("sessionStorage.clear(); true")
    browser.goto(f"http://127.0.0.1:{hare.http_port}/")
    browser.wait("!document.querySelector('#login').hidden", what="the login form")
    browser.eval(
        f"document.querySelector('#login-user').value = {js(user)};"
        f"document.querySelector('#login-password').value = {js(password)};"
        "document.querySelector('#login-submit').click(); true"
    )


def test_login_is_refused_with_a_wrong_password_and_accepted_with_the_right_one(hare, browser):
    login(browser, hare, "guest", "wrong")
    browser.wait("document.querySelector('#login-error').textContent === 'Login refused'")
    assert browser.eval("document.querySelector('#nav').hidden") is True
    login(browser, hare, "guest", "guest")
    browser.wait("!document.querySelector('#nav').hidden", what="the views after login")
    browser.wait("document.querySelector('#card-connections') !== null", what="the overview cards")
    assert "guest" in browser.eval("document.querySelector('#who').textContent")


def test_a_queue_appears_after_a_publish_and_the_forms_publish_and_get(hare, browser):
    login(browser, hare, "guest", "guest")
    browser.wait("!document.querySelector('#nav').hidden")
    c = hare.connect()
    ch = c.channel()
    ch.queue_declare("web-q")
    for i in range(3):
        ch.basic_publish("", "web-q", b"from pika %d" % i)
    try:
        browser.eval("location.hash = '#/queues'; true")
        browser.wait(
            "[...document.querySelectorAll('#queues-table tbody a')].some(a => a.textContent === 'web-q')",
            what="web-q in the queues table",
        )
        browser.eval("[...document.querySelectorAll('#queues-table tbody a')].find(a => a.textContent === 'web-q').click(); true")
        browser.wait("document.querySelector('#q-ready') && document.querySelector('#q-ready').textContent === '3'", what="3 ready")
        browser.eval(
            "document.querySelector('#publish-payload').value = 'from the page';"
            "document.querySelector('#publish-submit').click(); true"
        )
        browser.wait("document.querySelector('#publish-result').textContent === 'Message published.'")
        browser.wait("document.querySelector('#q-ready').textContent === '4'", what="4 ready after the form's publish")
        browser.eval(
            "document.querySelector('#get-ackmode').value = 'ack_requeue_false';"
            "document.querySelector('#get-count').value = '10';"
            "document.querySelector('#get-submit').click(); true"
        )
        browser.wait("document.querySelectorAll('.get-message').length === 4", what="4 messages got")
        payloads = browser.eval("[...document.querySelectorAll('.get-message')].map(e => e.textContent)")
        assert payloads == ["from pika 0", "from pika 1", "from pika 2", "from the page"]
        browser.wait("document.querySelector('#q-ready').textContent === '0'", what="the queue emptied by the get")
        assert ch.queue_declare("web-q", passive=True).method.message_count == 0
        # The default exchange's page shows its rates in and out (from its message_stats).
        browser.eval("location.hash = '#/exchanges/%2F/amq.default'; true")
        browser.wait("document.querySelector('#x-in') && /^[0-9,.]+$/.test(document.querySelector('#x-out').textContent)",
                     what="the exchange's rates")
    finally:
        ch.queue_delete("web-q")
        c.close()


def test_a_streams_page_shows_its_offsets_and_subscriptions(hare, browser):
    login(browser, hare, "guest", "guest")
    browser.wait("!document.querySelector('#nav').hidden")
    c = hare.connect()
    ch = c.channel()
    ch.queue_declare("web-stream", durable=True, arguments={"x-queue-type": "stream"})
    ch.confirm_delivery()
    for i in range(10):
        ch.basic_publish("", "web-stream", b"m%d" % i)
    wait_for(lambda: "stream protocol listening" in hare.read_log(), what="the stream listener")
    r = Raw(STREAM_PORT)
    # No credit: it is sent nothing and lags by the whole stream.
    assert r.subscribe(5, "web-stream", credit=0) == OK
    try:
        browser.eval("location.hash = '#/queues/%2F/web-stream'; true")
        browser.wait("document.querySelector('#q-stream-committed') && document.querySelector('#q-stream-committed').textContent === '9'",
                     what="the committed offset")
        assert browser.eval("document.querySelector('#q-stream-first').textContent") == "0"
        assert browser.eval("document.querySelector('#q-stream-segments').textContent") == "1"
        browser.wait("document.querySelectorAll('#q-stream-subs tbody tr').length === 1", what="the subscription")
        cells = browser.eval("[...document.querySelectorAll('#q-stream-subs tbody td')].map(td => td.textContent)")
        assert cells[1:] == ["5", "0", "10", "0", "0", "true"], cells
    finally:
        r.close()
        ch.queue_delete("web-stream")
        c.close()


def test_the_connections_table_shows_how_each_connection_logged_in(hare, browser):
    """The login mechanism and the TLS session are what operators audit connections by."""
    login(browser, hare, "guest", "guest")
    browser.wait("!document.querySelector('#nav').hidden")
    c = hare.connect()
    try:
        browser.eval("location.hash = '#/connections'; true")
        browser.wait("[...document.querySelectorAll('#connections-table th')].map(th => th.textContent).join('|')"
                     ".includes('Login|TLS|Client certificate')", what="the login and TLS columns")
        browser.wait("[...document.querySelectorAll('#connections-table tbody td')].some(td => td.textContent === 'PLAIN')",
                     what="a connection that logged in with PLAIN")
    finally:
        c.close()


def api_get(hare, path):
    import base64
    import urllib.error
    import urllib.request
    req = urllib.request.Request(f"http://127.0.0.1:{hare.http_port}{path}")
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return e.code


def fill(browser, values, submit):
    """Sets form fields (by id) and submits the form."""
    script = "".join(f"document.querySelector('#{k}').value = {js(v)};" for k, v in values.items())
    browser.eval(script + f"document.querySelector('#{submit}').click(); true")


def click_row(browser, table, text, action):
    """Clicks the `action` button of the row of `table` that has a cell reading `text`."""
    browser.eval(
        f"[...document.querySelectorAll('#{table} tbody tr')].find(tr => [...tr.cells].some(td => td.textContent === {js(text)}))"
        f".querySelector('button[data-action={js(action)}]').click(); true"
    )


def test_the_admin_section_manages_users_vhosts_permissions_limits_policies_and_shovels(hare, browser):
    login(browser, hare, "guest", "guest")
    browser.wait("!document.querySelector('#nav').hidden")
    browser.eval("window.confirm = () => true; true")
    has_row = "[...document.querySelectorAll('#{t} tbody td')].some(td => td.textContent === {v})"
    # Users: add, then change its tags through the row's edit button.
    browser.eval("location.hash = '#/admin/users'; true")
    browser.wait("document.querySelector('#user-form') !== null", what="the users form")
    fill(browser, {"user-name": "web-user", "user-password": "pw", "user-tags": "management"}, "user-submit")
    browser.wait(has_row.format(t="users-table", v=js("web-user")), what="the new user listed")
    assert api_get(hare, "/api/users/web-user")["tags"] == ["management"]
    click_row(browser, "users-table", "web-user", "edit")
    fill(browser, {"user-tags": "policymaker"}, "user-submit")
    browser.wait("document.querySelector('#admin-ok').textContent === 'User web-user saved.'")
    assert api_get(hare, "/api/users/web-user")["tags"] == ["policymaker"]
    # The password was kept: the user still logs in with it.
    import urllib.request, base64
    req = urllib.request.Request(f"http://127.0.0.1:{hare.http_port}/api/whoami")
    req.add_header("Authorization", "Basic " + base64.b64encode(b"web-user:pw").decode())
    assert json.load(urllib.request.urlopen(req, timeout=30))["name"] == "web-user"
    # Vhosts, permissions, limits.
    browser.eval("location.hash = '#/admin/vhosts'; true")
    browser.wait("document.querySelector('#vhost-form') !== null")
    fill(browser, {"vhost-name": "web-vh", "vhost-description": "from the page"}, "vhost-submit")
    browser.wait(has_row.format(t="vhosts-table", v=js("web-vh")), what="the new vhost listed")
    browser.eval("location.hash = '#/admin/permissions'; true")
    browser.wait("document.querySelector('#permission-form') !== null")
    fill(browser, {"permission-user": "web-user", "permission-vhost": "web-vh", "permission-configure": "^web"}, "permission-submit")
    browser.wait(has_row.format(t="permissions-table", v=js("^web")), what="the permissions listed")
    assert api_get(hare, "/api/permissions/web-vh/web-user")["configure"] == "^web"
    browser.eval("location.hash = '#/admin/limits'; true")
    browser.wait("document.querySelector('#limit-form') !== null")
    fill(browser, {"limit-kind": "vhost", "limit-name": "web-vh", "limit-limit": "max-queues", "limit-value": "5"}, "limit-submit")
    browser.wait(has_row.format(t="limits-table", v=js("max-queues")), what="the limit listed")
    assert api_get(hare, "/api/vhost-limits/web-vh")[0]["value"] == {"max-queues": 5}
    # Policies: a refusal shows RabbitMQ's reason; a good one applies to a queue at once.
    c = hare.connect()
    ch = c.channel()
    ch.queue_declare("web-bounded")
    try:
        browser.eval("location.hash = '#/admin/policies'; true")
        browser.wait("document.querySelector('#policy-form') !== null")
        fill(browser, {"policy-name": "web-p", "policy-pattern": "^web-", "policy-apply-to": "queues",
                       "policy-definition": '{"max-length": "ten"}'}, "policy-submit")
        browser.wait("document.querySelector('#admin-error').textContent.includes('is not a valid maximum length')",
                     what="the refusal's reason")
        fill(browser, {"policy-definition": '{"max-length": 3}', "policy-priority": "2"}, "policy-submit")
        browser.wait(has_row.format(t="policies-table", v=js("web-p")), what="the policy listed")
        assert api_get(hare, "/api/policies/%2F/web-p")["definition"] == {"max-length": 3}
        assert api_get(hare, "/api/queues/%2F/web-bounded")["policy"] == "web-p"
        browser.eval("location.hash = '#/queues/%2F/web-bounded'; true")
        browser.wait("(document.querySelector('#q-policy')||{}).textContent === 'web-p'", what="the queue page's policy")
        browser.wait("document.querySelector('#q-effective').textContent.includes('\"max-length\":3')")
        browser.eval("location.hash = '#/admin/operator-policies'; true")
        browser.wait("document.querySelector('#policy-form') !== null && document.querySelector('#admin-tab-operator-policies').className === 'active'")
        fill(browser, {"policy-name": "web-cap", "policy-pattern": ".*", "policy-definition": '{"max-length": 2}'}, "policy-submit")
        browser.wait(has_row.format(t="policies-table", v=js("web-cap")), what="the operator policy listed")
        assert api_get(hare, "/api/queues/%2F/web-bounded")["operator_policy"] == "web-cap"
        click_row(browser, "policies-table", "web-cap", "delete")
        browser.wait(f"!({has_row.format(t='policies-table', v=js('web-cap'))})", what="the operator policy gone")
        browser.eval("location.hash = '#/admin/policies'; true")
        browser.wait(has_row.format(t="policies-table", v=js("web-p")))
        click_row(browser, "policies-table", "web-p", "delete")
        browser.wait(f"!({has_row.format(t='policies-table', v=js('web-p'))})", what="the policy gone")
        assert api_get(hare, "/api/policies/%2F/web-p") == 404
    finally:
        ch.queue_delete("web-bounded")
        c.close()
    # A shovel set up through the page moves a queue and shows its state.
    c = hare.connect()
    ch = c.channel()
    ch.queue_declare("web-from")
    for i in range(5):
        ch.basic_publish("", "web-from", b"s%d" % i)
    try:
        browser.eval("location.hash = '#/admin/shovels'; true")
        browser.wait("document.querySelector('#shovel-form') !== null")
        fill(browser, {"shovel-name": "web-move", "shovel-src-queue": "web-from", "shovel-dest-queue": "web-to"},
             "shovel-submit")
        browser.wait(has_row.format(t="shovels-table", v=js("running")), what="the shovel running")
        browser.wait(has_row.format(t="shovels-table", v=js("5")), what="five messages moved")
        assert ch.queue_declare("web-to", passive=True).method.message_count == 5
        click_row(browser, "shovels-table", "web-move", "delete")
        browser.wait(f"!({has_row.format(t='shovels-table', v=js('web-move'))})", what="the shovel gone")
        assert api_get(hare, "/api/parameters/shovel/%2F/web-move") == 404
    finally:
        ch.queue_delete("web-from")
        ch.queue_delete("web-to")
        c.close()
    # Deleting through the rows.
    browser.eval("location.hash = '#/admin/vhosts'; true")
    browser.wait(has_row.format(t="vhosts-table", v=js("web-vh")))
    click_row(browser, "vhosts-table", "web-vh", "delete")
    browser.wait(f"!({has_row.format(t='vhosts-table', v=js('web-vh'))})", what="the vhost gone")
    browser.eval("location.hash = '#/admin/users'; true")
    browser.wait(has_row.format(t="users-table", v=js("web-user")))
    click_row(browser, "users-table", "web-user", "delete")
    browser.wait(f"!({has_row.format(t='users-table', v=js('web-user'))})", what="the user gone")
    assert api_get(hare, "/api/users/web-user") == 404


def test_ten_thousand_queues_are_listed_a_page_at_a_time(hare, browser):
    c = hare.connect()
    ch = c.channel()
    for i in range(10_000):
        ch.queue_declare(f"many-{i:05d}", auto_delete=False)
    try:
        login(browser, hare, "guest", "guest")
        browser.wait("!document.querySelector('#nav').hidden")
        browser.eval("location.hash = '#/queues'; true")
        browser.wait("(document.querySelector('#queues-table-count')||{}).textContent === '10000 of 10000'", what="the count")
        assert browser.eval("document.querySelectorAll('#queues-table tbody tr').length") == 50
        browser.eval("const f = document.querySelector('#queues-table-filter'); f.value = 'many-0999'; f.dispatchEvent(new Event('input')); true")
        browser.wait("document.querySelector('#queues-table-count').textContent === '10 of 10000'", what="the filtered count")
    finally:
        for i in range(10_000):
            ch.queue_delete(f"many-{i:05d}")
        c.close()


@pytest.mark.skipif(not os.environ.get("SCREENSHOT_DIR"), reason="SCREENSHOT_DIR not set")
def test_screenshots_under_load(hare, browser):
    out = os.environ["SCREENSHOT_DIR"]
    load = subprocess.Popen(
        [HARE_BIN, "perf", "--uri", f"amqp://guest:guest@127.0.0.1:{hare.port}/%2f", "--rate", "3000", "--size", "256",
         "--ack", "manual", "--prefetch", "100", "--duration", "300", "--prefix", "shop-orders", "--quiet"],
        stdout=subprocess.DEVNULL,
    )
    try:
        login(browser, hare, "guest", "guest")
        browser.wait("!document.querySelector('#nav').hidden")
        browser.wait("Number(document.querySelector('#card-publish-s').textContent.replace(/,/g, '')) > 1000", timeout=30, what="rates")
        # Each poll adds a point to the charts: wait for a chart's worth.
        browser.wait("samples.overview && samples.overview.length >= 20", timeout=90, what="the overview charts to fill")
        browser.screenshot(os.path.join(out, "overview.png"))
        browser.eval("location.hash = '#/queues/%2F/shop-orders-0'; true")
        browser.wait("document.querySelector('#q-in') && Number(document.querySelector('#q-in').textContent.replace(/,/g, '')) > 0", timeout=30)
        browser.wait("(samples['queue://shop-orders-0'] || []).length >= 20", timeout=90, what="the queue charts to fill")
        browser.screenshot(os.path.join(out, "queue.png"))
    finally:
        load.kill()
        load.wait()
