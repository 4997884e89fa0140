"""A headless Chromium (Debian's `chromium` package) driven over the DevTools protocol: load
a page, run JavaScript in it, wait for what it shows, take screenshots. Just enough of the
protocol for the web page's tests; nothing is downloaded."""
import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import urllib.request

import websocket

from conftest import wait_for


def chromium_binary():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    def __init__(self, width=1280, height=900):
        binary = chromium_binary()
        if not binary:
            raise RuntimeError("chromium is not installed (test.sh installs Debian's chromium package)")
        self.dir = tempfile.mkdtemp(prefix="hare-chromium-")
        self.proc = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                f"--user-data-dir={self.dir}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = os.path.join(self.dir, "DevToolsActivePort")
        port = wait_for(lambda: self._read_port(port_file), timeout=60, what="chromium's DevTools port")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t["type"] == "page"]
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=30)
        self.ids = itertools.count(1)
        self.send("Page.enable")
        self.send("Runtime.enable")

    def _read_port(self, path):
        if self.proc.poll() is not None:
            raise AssertionError("chromium exited early")
        try:
            with open(path) as f:
                return int(f.readline().strip())
        except (OSError, ValueError):
            return None

    def send(self, method, **params):
        """Sends a DevTools command and returns its result (events meanwhile are skipped)."""
        mid = next(self.ids)
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        for _ in range(100_000):
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg.get("result", {})
        raise AssertionError(f"no answer to {method}")

    def eval(self, expression):
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def goto(self, url):
        self.send("Page.navigate", url=url)
        wait_for(lambda: self.eval("document.readyState") == "complete", timeout=30, what=f"{url} to load")

    def wait(self, expression, timeout=20, what=None):
        return wait_for(lambda: self.eval(expression), timeout=timeout, interval=0.1, what=what or expression)

    def screenshot(self, path):
        data = self.send("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self):
        try:
            self.ws.close()
        finally:
            self.proc.kill()
            self.proc.wait()
            shutil.rmtree(self.dir, ignore_errors=True)
