"""Differential test of the management API: the same requests against two brokers' HTTP APIs,
every answer compared.

Each scenario is a list of steps: HTTP requests (method, path, JSON body, user) and AMQP
operations (through amqp_diff's sessions, for connections, channels, consumers and messages).
For each request the record is its status and a view of its body:
- an error body (`error`, `reason`) is kept whole;
- a JSON body keeps the set of its keys, recursively (a list's elements are viewed one by one
  and sorted), and the values of the keys in VALUE_KEYS, which are deterministic (names,
  counts, arguments, permissions, limits, tags); other values become "*". Node names,
  connection names (which carry ports) and generated names are normalised.
Keys that RabbitMQ has and Hare leaves out on purpose (Erlang's internals and the like) and
Hare's own additions are listed in DELIBERATE, each with its reason, and taken out before the
comparison; docs/compatibility.md carries the same table.

RabbitMQ's statistics reach its API a little later than they happen (it collects them every
100 ms here), so a GET is read again on both brokers until they agree or a deadline passes;
a difference still there at the deadline is a difference.

Two sources of scenarios (http_scenarios.py), as in amqp_diff.py: SCRIPTED, hand-written, one
or more for each endpoint Hare serves (ENDPOINTS lists them), and random: a seeded generator
of requests over users, vhosts, permissions, limits, queues, exchanges, bindings, publish and
get.

Usage (run.py starts both brokers and passes the addresses):
    http_diff.py --a 127.0.0.1:5711,15711 --b 127.0.0.1:5712,15712 --scripted --seeds 0:50
"""
import argparse
import base64
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pika

import amqp_diff
from http_scenarios import SCRIPTED, gen_steps

# Values kept in a view; every other value is only present ("*").
VALUE_KEYS = {
    "name", "vhost", "durable", "auto_delete", "exclusive", "arguments", "type", "internal",
    "source", "destination", "destination_type", "routing_key", "properties_key",
    "tags", "user", "configure", "write", "read", "exchange", "value", "limits",
    "messages", "messages_ready", "messages_unacknowledged", "consumers", "consumer_count",
    "message_count", "payload", "payload_bytes", "payload_encoding", "redelivered", "routed",
    "properties", "headers", "status", "reason", "error", "description", "default_queue_type",
    "tracing", "state", "number", "prefetch_count", "global_prefetch_count", "confirm",
    "transactional", "ack_required", "consumer_tag", "active", "activity_status", "channels",
    "protocol", "auth_mechanism", "ssl", "user_provided_name", "publish", "deliver", "get",
    "get_no_ack", "deliver_no_ack", "get_empty", "ack", "redeliver", "deliver_get",
    "drop_unroutable", "return_unroutable", "publish_in", "publish_out", "exclusive_consumer_tag",
    "single_active_consumer_tag", "messages_persistent", "message_bytes", "message_bytes_ready",
    "message_bytes_unacknowledged", "message_bytes_persistent", "head_message_timestamp",
    "policy", "operator_policy", "effective_policy_definition", "connections", "queues",
    "exchanges", "object_totals", "hashing_algorithm", "rabbitmq_version",
    "management_version", "users", "permissions", "topic_permissions", "bindings",
    "max-connections", "max-queues", "max-channels", "ok", "deliveries", "incoming", "outgoing",
    "enabled", "path", "cluster_links", "partitions", "rates_mode", "exchange_types",
}

# Keys of RabbitMQ's objects that Hare leaves out on purpose, and Hare's own additions; the
# reasons are in docs/compatibility.md ("The management API"). A name applies wherever it
# appears in an object of that kind; "*" is every object.
DELIBERATE = {
    # Erlang's internals: the runtime's garbage collector, reductions, schedulers, processes,
    # the distribution layer and Mnesia, which Hare does not have.
    "*": {
        "garbage_collection", "reductions", "reductions_details", "erlang_version",
        "erlang_full_version", "statistics_db_event_queue", "release_series_support_status",
        "socket_opts", "cowboy_opts", "ssl_opts", "applications", "gc_num", "gc_num_details",
        "gc_bytes_reclaimed", "gc_bytes_reclaimed_details", "proc_used", "proc_used_details",
        "proc_total", "run_queue", "net_ticktime", "metrics_gc_queue_length",
        "ra_open_file_metrics", "mnesia_ram_tx_count", "mnesia_ram_tx_count_details",
        "being_drained", "os_pid",
        # Hare's own, beside RabbitMQ's fields.
        "product_name", "product_version", "time_in_queue_us", "time_to_ack_us", "forecast",
        "idle_since",
    },
    # A classic queue's internal structure (RabbitMQ's q1..q4, delta) and classic mirroring,
    # which Hare does not have.
    "queue": {"backing_queue_status", "recoverable_slaves", "slave_nodes", "synchronised_slave_nodes"},
    # The consumer's x-priority argument is in its arguments; Hare names it again.
    "consumer": {"priority"},
    # Hare's own: what a shovel moved, and how many of those its source had delivered before.
    "shovel": {"messages_shovelled", "messages_redelivered"},
    # RabbitMQ's classic queue index; a Hare queue log has no separate index (a message's
    # record is its own entry).
    "node": {"queue_index_read_count", "queue_index_read_count_details", "queue_index_write_count",
             "queue_index_write_count_details"},
}

# Lists whose entries are configuration or environment, not behaviour: only their presence
# is compared (retention periods, listener ports, files, plugins).
OPAQUE = {"global", "basic", "detailed", "ports", "protocols", "config_files", "log_files", "enabled_plugins"}
# Lists compared by the keys of their entries: RabbitMQ has a demo mechanism Hare has not, and
# Hare offers EXTERNAL (with a client CA) where RabbitMQ needs a plugin.
SHAPE_ONLY = {"auth_mechanisms"}
# The keys a RabbitMQ object has before its first statistics: a queue declared through the
# API that nothing happened to yet has no others, where Hare has its statistics from the
# start. The other keys are compared wherever RabbitMQ has them.
QUEUE_DEFINITION = {"arguments", "auto_delete", "durable", "exclusive", "name", "node", "type", "vhost"}
# Values that differ by nature (salted hashes).
NEVER_VALUES = {"password_hash"}
# Exchanges of RabbitMQ's tracing and of Hare's audit log, which the other does not have.
OWN_EXCHANGES = {"amq.rabbitmq.trace", "amq.rabbitmq.event"}
# A vhost's or the node's statistics, which RabbitMQ starts and keeps on its own timers (a
# connection gone before its first emission is never counted, a deleted vhost's totals come
# back with it): compared when both brokers have them.
TOTALS_STATS = {
    "message_stats", "messages", "messages_details", "messages_ready", "messages_ready_details",
    "messages_unacknowledged", "messages_unacknowledged_details", "recv_oct", "recv_oct_details",
    "send_oct", "send_oct_details",
}
# Totals whose counts RabbitMQ also takes from the channels its API uses internally (the API's
# own publishes and gets), which Hare counts on the queue and exchange alone: their keys are
# compared, not their values.
TOTALS = {"overview", "vhost", "node"}

# The endpoints of RabbitMQ 3.10's rabbit_mgmt_dispatcher.erl that Hare serves, each compared
# by the scripted scenarios below (the check at the end of a run fails if one is not).
ENDPOINTS = [
    "/overview", "/cluster-name", "/nodes", "/nodes/:node", "/extensions", "/all-configuration",
    "/definitions", "/definitions/:vhost", "/vhost-limits", "/vhost-limits/:vhost",
    "/vhost-limits/:vhost/:name", "/connections", "/connections/:connection",
    "/connections/username/:username", "/connections/:connection/channels", "/channels",
    "/channels/:channel", "/consumers", "/consumers/:vhost", "/exchanges", "/exchanges/:vhost",
    "/exchanges/:vhost/:exchange", "/exchanges/:vhost/:exchange/publish",
    "/exchanges/:vhost/:exchange/bindings/source", "/exchanges/:vhost/:exchange/bindings/destination",
    "/queues", "/queues/:vhost", "/queues/:vhost/:queue", "/queues/:vhost/:destination/bindings",
    "/queues/:vhost/:queue/contents", "/queues/:vhost/:queue/get", "/bindings", "/bindings/:vhost",
    "/bindings/:vhost/e/:source/:dtype/:destination",
    "/bindings/:vhost/e/:source/:dtype/:destination/:props", "/vhosts", "/vhosts/:vhost",
    "/vhosts/:vhost/permissions", "/vhosts/:vhost/topic-permissions", "/vhosts/:vhost/connections",
    "/vhosts/:vhost/channels", "/users/bulk-delete", "/users/without-permissions", "/users",
    "/users/:user", "/users/:user/permissions", "/users/:user/topic-permissions",
    "/user-limits/:user/:name", "/user-limits", "/user-limits/:user", "/whoami", "/permissions",
    "/permissions/:vhost/:user", "/topic-permissions", "/topic-permissions/:vhost/:user",
    "/aliveness-test/:vhost", "/healthchecks/node", "/healthchecks/node/:node",
    "/health/checks/alarms", "/health/checks/local-alarms", "/health/checks/port-listener/:port",
    "/health/checks/protocol-listener/:protocol", "/health/checks/virtual-hosts",
    "/health/checks/node-is-mirror-sync-critical", "/health/checks/node-is-quorum-critical",
    "/auth", "/policies", "/policies/:vhost", "/policies/:vhost/:name", "/operator-policies",
    "/operator-policies/:vhost", "/operator-policies/:vhost/:name", "/parameters", "/parameters/:component",
    "/parameters/:component/:vhost", "/parameters/:component/:vhost/:name",
    # The shovel management plugin's.
    "/shovels", "/shovels/:vhost", "/shovels/vhost/:vhost/:name", "/shovels/vhost/:vhost/:name/restart",
]


class Broker:
    """One broker: its AMQP session (amqp_diff's) and its HTTP API."""

    def __init__(self, amqp, http):
        host, port = amqp.rsplit(":", 1)
        self.session = amqp_diff.Session(host, int(port))
        self.amqp_port = int(port)
        self.http = http
        self.http_port = int(http.rsplit(":", 1)[1])
        self.node = self.request("GET", "/api/overview")[1]["node"]

    def request(self, method, path, body=None, user=("guest", "guest")):
        headers = {"content-type": "application/json"}
        if user is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
        data = None if body is None else json.dumps(body).encode()
        r = urllib.request.Request(f"http://{self.http}{path}", method=method, data=data, headers=headers)
        try:
            with urllib.request.urlopen(r, timeout=30) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------
# Views


def kind_of(obj):
    """Which kind of object a dict is, for DELIBERATE and the comparisons above."""
    keys = obj.keys()
    if "consumer_tag" in keys and "channel_details" in keys:
        return "consumer"
    if {"durable", "exclusive", "arguments", "node"} <= keys:
        return "queue"
    if "management_version" in keys:
        return "overview"
    if "tracing" in keys and "cluster_state" in keys:
        return "vhost"
    if "partitions" in keys and "uptime" in keys:
        return "node"
    if "rabbit_version" in keys:
        return "definitions"
    if "src_protocol" in keys and "dest_protocol" in keys:
        return "shovel"
    return None


def normalize_text(s, b):
    s = s.replace(b.node, "<node>")
    s = re.sub(r"\d+\.\d+\.\d+\.\d+:\d+ -> \d+\.\d+\.\d+\.\d+:\d+", "<connection>", s)
    s = re.sub(r"amq\.gen-[A-Za-z0-9_\-]+", "amq.gen-*", s)
    s = re.sub(r"amq\.ctag-[A-Za-z0-9_\-]+", "amq.ctag-*", s)
    s = re.sub(r"^ctag\d+\.[0-9a-f]{32}$", "ctag*", s)
    return s


def value_view(v, b):
    if isinstance(v, str):
        return normalize_text(v, b)
    if isinstance(v, dict):
        return {normalize_text(k, b): value_view(x, b) for k, x in sorted(v.items())}
    if isinstance(v, list):
        return [value_view(x, b) for x in v]
    return v


def view(v, b, keep=False):
    """The comparable view of a JSON value (see the module's doc)."""
    if isinstance(v, dict):
        kind = kind_of(v)
        skip = DELIBERATE["*"] | DELIBERATE.get(kind, set())
        v = dict(v)
        if kind in TOTALS and isinstance(v.get("message_stats"), dict):
            v["message_stats"] = {k: "*" for k in v["message_stats"]}
        if "type" in v and "internal" in v and (v.get("name") == "" or str(v.get("name")).startswith("amq.")):
            # A built-in exchange's counters add up over the whole run, and RabbitMQ keeps them
            # across its vhost's deletion: their keys are compared, not their values.
            if isinstance(v.get("message_stats"), dict):
                v["message_stats"] = {k: "*" for k in v["message_stats"]}
        if kind == "overview" and isinstance(v.get("object_totals"), dict):
            # Counted with each broker's own exchanges (OWN_EXCHANGES).
            v["object_totals"] = dict(v["object_totals"], exchanges="*")
        if kind == "definitions":
            # RabbitMQ 3.10 exports a vhost's name only; Hare its description, tags and limits
            # too. Its cluster id and a vhost's emptied limits (`[]`) are RabbitMQ's own.
            v["vhosts"] = [{"name": x.get("name")} for x in v.get("vhosts", [])]
            v["global_parameters"] = "*"
            v["parameters"] = [p for p in v.get("parameters", []) if p.get("value") not in ([], {})]
        if isinstance(v.get("properties_key"), str) and "~" in v["properties_key"][1:]:
            # The hash of a binding's arguments: RabbitMQ's is of the Erlang term.
            v["properties_key"] = v["properties_key"].split("~")[0] + "~<hash>"
        for k in ("listeners", "contexts"):
            if isinstance(v.get(k), list):
                # RabbitMQ's inter-node listener; a single Hare node has none.
                v[k] = [x for x in v[k] if not (isinstance(x, dict) and x.get("protocol") == "clustering")]
        out = {}
        for k, x in sorted(v.items()):
            if k in skip:
                continue
            if k in NEVER_VALUES:
                out[k] = "*"
                continue
            if k in OPAQUE:
                out[k] = "*"
                continue
            if k in SHAPE_ONLY and isinstance(x, list):
                out[k] = sorted({json.dumps(sorted(e)) for e in x if isinstance(e, dict)})
                continue
            k2 = normalize_text(k, b)
            if keep or k in VALUE_KEYS:
                out[k2] = view(x, b, keep=True) if isinstance(x, (dict, list)) and k not in ("arguments", "headers", "properties", "limits", "value", "effective_policy_definition") else value_view(x, b)
            else:
                out[k2] = view(x, b) if isinstance(x, (dict, list)) else "*"
        return out
    if isinstance(v, list):
        items = [x for x in v if not own_entry(x)]
        return sorted((view(x, b, keep) for x in items), key=lambda x: json.dumps(x, sort_keys=True))
    if keep or not isinstance(v, (dict, list)):
        return value_view(v, b) if keep else "*"
    return "*"


def own_entry(x):
    """List entries one broker has by design: the exchanges in OWN_EXCHANGES, and a vhost
    whose limits were all cleared (RabbitMQ keeps it with `[]`, Hare forgets it)."""
    if not isinstance(x, dict):
        return False
    if x.get("name") in OWN_EXCHANGES and "type" in x:
        return True
    return set(x) == {"vhost", "value"} and x["value"] in ([], {})


def record(b, status, body):
    if isinstance(body, dict) and set(body) == {"error", "reason"}:
        return [status, value_view(body, b)]
    if isinstance(body, str):
        return [status, "<text>"]
    return [status, view(body, b)]


# ---------------------------------------------------------------------------------------------
# Running a scenario


def q(s):
    return urllib.parse.quote(s, safe="")


def expand(path, b):
    return path.replace("{node}", q(b.node)).replace("{amqp_port}", str(b.amqp_port))


def run_step(b, step, pair):
    """One step on broker b; returns its record. HTTP GETs are settled by `settle`."""
    if "op" in step:
        return amqp_diff.normalize(amqp_diff.run_op(b.session, step))
    user = step.get("as", ("guest", "guest"))
    path = expand(step["path"], b)
    if "{connection}" in path or "{channel}" in path:
        conns = [c for c in b.request("GET", "/api/connections")[1] if c.get("user") == "guest"]
        if not conns:
            return ["no connection"]
        name = sorted(c["name"] for c in conns)[0]
        path = path.replace("{connection}", q(name)).replace("{channel}", q(f"{name} (1)"))
    status, body = b.request(step["http"], path, step.get("body"), user=tuple(user) if user else None)
    if step.get("shape"):
        # Values that are configuration (the cluster's name): the keys only.
        return [status, shape(body)]
    return record(b, status, body)


def shape(v):
    if isinstance(v, dict):
        return {k: shape(x) for k, x in v.items()}
    if isinstance(v, list):
        return [shape(x) for x in v]
    return "*"


SETTLE_S = 3.0


def reconcile(x, y):
    """Takes from x (Hare's view) what y (RabbitMQ's) does not have yet or has for reasons of
    its own, walking both alike: a queue's statistics before RabbitMQ's first emission (a
    queue object without `state`), and the message counts of a vhost or the node when only
    one side has them (RabbitMQ counts its API's own channels in them)."""
    if isinstance(x, dict) and isinstance(y, dict):
        if {"durable", "exclusive", "arguments"} <= set(y) and "state" not in y:
            for k in list(x):
                if k not in y:
                    del x[k]
        if "management_version" in y and (x.get("queue_totals") == {}) != (y.get("queue_totals") == {}):
            # RabbitMQ totals its queues' last statistics, which it drops some time after
            # they are deleted: compared when both have queues to total.
            x["queue_totals"] = y["queue_totals"] = {}
        if {"durable", "exclusive", "arguments"} <= set(y) and ("message_stats" in x or "message_stats" in y):
            # A queue's counters come from its publishers' channels' statistics; RabbitMQ
            # sometimes credits a fresh queue with a publish made to its name before it
            # existed (seen in CI: publish=1 on a queue nothing reached, with and without
            # other counters beside it), depending on when its channel's statistics were
            # emitted. A counter is compared when both have it; no counters at all is the
            # same as none in common.
            xs, ys = x.get("message_stats", {}), y.get("message_stats", {})
            if isinstance(xs, dict) and isinstance(ys, dict):
                for k in set(xs) ^ set(ys):
                    xs.pop(k, None)
                    ys.pop(k, None)
                for side, stats in ((x, xs), (y, ys)):
                    if stats:
                        side["message_stats"] = stats
                    else:
                        side.pop("message_stats", None)
        if {"type", "internal"} <= set(y) and "durable" in y and ("message_stats" in x) != ("message_stats" in y):
            # An exchange's counters come from its publishers' channels' statistics, which
            # RabbitMQ never emits for a channel gone sooner (its API's own, for a publish that
            # routes nowhere): compared when both have them.
            x.pop("message_stats", None)
            y.pop("message_stats", None)
        if {"tracing", "cluster_state"} <= set(y) or "management_version" in y:
            for k in TOTALS_STATS:
                if (k in x) != (k in y):
                    x.pop(k, None)
                    y.pop(k, None)
        for k in set(x) & set(y):
            reconcile(x[k], y[k])
    elif isinstance(x, list) and isinstance(y, list):
        # Objects pair by name and vhost (each vhost has its own default exchanges).
        key = lambda e: (e.get("name"), e.get("vhost"))  # noqa: E731
        named = {key(e): e for e in y if isinstance(e, dict) and "name" in e}
        for i, e in enumerate(x):
            if isinstance(e, dict) and "name" in e:
                if key(e) in named:
                    reconcile(e, named[key(e)])
            elif i < len(y):
                reconcile(e, y[i])
        # Views are sorted by their JSON text, which the keys dropped above change: both
        # lists are sorted again so that entries pair by position.
        for side in (x, y):
            if all(isinstance(e, dict) for e in side):
                side.sort(key=lambda e: json.dumps(e, sort_keys=True))


def settle(a, b, step, ra, rb, deadline_s=None):
    """Reads a GET again on both brokers until they agree (statistics lag) or time runs out."""
    deadline = time.monotonic() + (deadline_s or SETTLE_S)
    reconcile(ra, rb)
    while ra != rb and time.monotonic() < deadline:
        time.sleep(0.05)
        ra, rb = run_step(a, step, None), run_step(b, step, None)
        reconcile(ra, rb)
    return ra, rb


def cleanup(b):
    s = b.session
    s.close()
    s.consumers.clear()
    # guest's permissions and limits first: a scenario may have narrowed them.
    b.request("PUT", "/api/permissions/%2F/guest", {"configure": ".*", "write": ".*", "read": ".*"})
    for lim in ("max-connections", "max-queues"):
        b.request("DELETE", f"/api/vhost-limits/%2F/{lim}")
    for lim in ("max-connections", "max-channels"):
        b.request("DELETE", f"/api/user-limits/guest/{lim}")
    s.cleanup()
    for u in b.request("GET", "/api/users")[1]:
        if u["name"] != "guest":
            b.request("DELETE", f"/api/users/{q(u['name'])}")
    for v in b.request("GET", "/api/vhosts")[1]:
        if v["name"] != "/":
            b.request("DELETE", f"/api/vhosts/{q(v['name'])}")
    for qq in b.request("GET", "/api/queues/%2F")[1]:
        b.request("DELETE", f"/api/queues/%2F/{q(qq['name'])}")
    for e in b.request("GET", "/api/exchanges/%2F")[1]:
        if e["name"] and not e["name"].startswith("amq."):
            b.request("DELETE", f"/api/exchanges/%2F/{q(e['name'])}")
    b.request("DELETE", "/api/topic-permissions/%2F/guest")
    for kind in ("policies", "operator-policies"):
        for p in b.request("GET", f"/api/{kind}/%2F")[1]:
            b.request("DELETE", f"/api/{kind}/%2F/{q(p['name'])}")
    for p in b.request("GET", "/api/parameters/shovel")[1] or []:
        b.request("DELETE", f"/api/parameters/shovel/{q(p['vhost'])}/{q(p['name'])}")
    # Every connection of the scenario gone before the next begins: RabbitMQ lists (and counts
    # against connection limits) a closed connection for a while after it closed.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        listed = b.request("GET", "/api/connections")[1]
        if isinstance(listed, list) and not listed:
            break
        time.sleep(0.05)


def ready(b, seconds=120):
    """Waits until the broker's node statistics are up (RabbitMQ's arrive some seconds after
    it starts): the overview's churn rates and contexts, the node's mechanisms."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        o = b.request("GET", "/api/overview")[1]
        n = b.request("GET", "/api/nodes")[1]
        if isinstance(o, dict) and o.get("churn_rates") and o.get("contexts") and isinstance(n, list) and n and "auth_mechanisms" in n[0]:
            return
        time.sleep(0.25)
    raise SystemExit(f"{b.http}: node statistics did not come within {seconds} s")


def run_scenario(a, b, steps, show=False):
    """Runs the steps on both brokers, one step at a time on each; returns the two records."""
    ra_all, rb_all = [], []
    try:
        for step in steps:
            ra, rb = run_step(a, step, b), run_step(b, step, a)
            if "deliberate" in step:
                # A deliberate difference (docs/compatibility.md): Hare's status is the one given.
                ok = ra[0] == step["hare"]
                ra, rb = ["deliberate", ok], ["deliberate", True]
            elif step.get("http") == "GET":
                ra, rb = settle(a, b, step, ra, rb)
            elif "op" in step:
                a.session.settle_consumers()
                b.session.settle_consumers()
            ra_all.append(ra)
            rb_all.append(rb)
            if show:
                print(f"   {json.dumps(step)}\n     -> {json.dumps(ra)}")
    finally:
        cleanup(a)
        cleanup(b)
    return ra_all, rb_all


# ---------------------------------------------------------------------------------------------


def flat(v, path=""):
    """Path -> value of every leaf, lists by index after sorting (as views are)."""
    out = {}
    if isinstance(v, dict):
        for k, x in v.items():
            out.update(flat(x, f"{path}/{k}"))
    elif isinstance(v, list) and v:
        for i, x in enumerate(v):
            out.update(flat(x, f"{path}[{i}]"))
    else:
        out[path] = v
    return out


def explain(x, y):
    """The differences between two records, path by path."""
    fx, fy = flat(x), flat(y)
    lines = [f"only in the first: {p} = {json.dumps(fx[p])}" for p in sorted(set(fx) - set(fy))]
    lines += [f"only in the second: {p} = {json.dumps(fy[p])}" for p in sorted(set(fy) - set(fx))]
    lines += [f"differs: {p}: {json.dumps(fx[p])} / {json.dumps(fy[p])}" for p in sorted(set(fx) & set(fy)) if fx[p] != fy[p]]
    return lines[:40]


def covered_endpoints():
    """The endpoints (in the dispatcher's spelling) the scripted scenarios call."""
    paths = set()
    for steps in SCRIPTED.values():
        for st in steps:
            if "path" in st:
                paths.add(st["path"].split("?")[0])
    found = set()
    for ep in ENDPOINTS:
        pattern = "^/api" + re.sub(r":[a-z]+", r"[^/]+", ep) + "$"
        if any(re.match(pattern, p) for p in paths):
            found.add(ep)
    return found


def renamed(steps, n):
    """The steps with their queue and exchange names (q1, e2, ...) made unique to scenario n:
    RabbitMQ keeps a deleted queue's or exchange's statistics for a while and gives them to
    a new one of the same name, which would make counts depend on the scenarios before."""
    text = json.dumps(steps)
    text = re.sub(r"\b([qe][0-9])\b", lambda m: f"{m.group(1)}-{n}", text)
    return json.loads(text)


def scenarios(args):
    n = 0
    if args.scripted:
        for name, steps in SCRIPTED.items():
            n += 1
            yield name, renamed(steps, n)
    if args.seeds:
        lo, hi = (int(x) for x in args.seeds.split(":"))
        for seed in range(lo, hi):
            n += 1
            yield f"seed {seed}", renamed(gen_steps(seed, args.ops), n)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="amqp host:port,http port of the first broker")
    ap.add_argument("--b", required=True, help="the same for the second broker")
    ap.add_argument("--seeds", help="range lo:hi of random seeds")
    ap.add_argument("--ops", type=int, default=30, help="requests per random scenario")
    ap.add_argument("--scripted", action="store_true")
    ap.add_argument("--only", help="run only the scripted scenario whose name contains this")
    ap.add_argument("--show", action="store_true")
    ap.add_argument("--max-diffs", type=int, default=20)
    ap.add_argument("--settle", type=float, default=10.0, help="seconds a GET may take to agree")
    args = ap.parse_args()
    global SETTLE_S
    SETTLE_S = args.settle

    def broker(spec):
        amqp, http_port = spec.split(",")
        return Broker(amqp, f"{amqp.rsplit(':', 1)[0]}:{http_port}")

    a, b = broker(args.a), broker(args.b)
    ready(b)
    cleanup(a)
    cleanup(b)
    total = same = 0
    diffs = []
    started = time.monotonic()
    for name, steps in scenarios(args):
        if args.only and args.only not in name:
            continue
        total += 1
        if args.show:
            print(f"== {name}")
        ra, rb = run_scenario(a, b, steps, show=args.show)
        if ra == rb:
            same += 1
            continue
        diffs.append(name)
        if len(diffs) <= args.max_diffs:
            for i, (x, y) in enumerate(zip(ra, rb)):
                if x != y:
                    print(f"DIFFERENCE in {name} at step {i}: {json.dumps(steps[i])}")
                    print(f"   first broker:  {json.dumps(x)[:3000]}")
                    print(f"   second broker: {json.dumps(y)[:3000]}")
                    for line in explain(x, y):
                        print(f"   {line}")
    elapsed = time.monotonic() - started
    missing = [ep for ep in ENDPOINTS if ep not in covered_endpoints()]
    print(f"{len(ENDPOINTS)} endpoints served and compared" + (f"; not called by any scenario: {missing}" if missing else ""))
    print(f"{total} scenarios, {same} agree, {len(diffs)} differ ({elapsed:.1f} s)")
    if diffs:
        print("differing: " + ", ".join(diffs[:50]))
    sys.exit(1 if diffs or (args.scripted and not args.only and missing) else 0)


if __name__ == "__main__":
    main()
