"""The management API's differential scenarios (see http_diff.py): scripted ones, calling
every endpoint Hare serves, and a seeded generator of random requests."""
import random
import urllib.parse


def q(s):
    return urllib.parse.quote(s, safe="")


# ---------------------------------------------------------------------------------------------
# Scripted scenarios


def GET(path, **kw):
    return {"http": "GET", "path": path, **kw}


def PUT(path, body=None, **kw):
    return {"http": "PUT", "path": path, "body": body if body is not None else {}, **kw}


def DELETE(path, **kw):
    return {"http": "DELETE", "path": path, **kw}


def POST(path, body=None, **kw):
    return {"http": "POST", "path": path, "body": body if body is not None else {}, **kw}


ALICE = ("alice", "secret")
# Where RabbitMQ 3.10's handler crashes (500 with an Erlang error), Hare answers 4xx.
CRASH = "RabbitMQ answers 500"

SCRIPTED = {
    "overview, nodes, extensions, cluster name, whoami, auth": [
        GET("/api/overview"),
        GET("/api/nodes"),
        GET("/api/nodes/{node}"),
        GET("/api/nodes/nobody%40nowhere", deliberate=CRASH, hare=404),
        GET("/api/extensions", deliberate="the web page has no plugin extensions to load", hare=200),
        GET("/api/cluster-name", shape=True),
        GET("/api/whoami"),
        GET("/api/auth"),
        GET("/api/nowhere"),
        GET("/api/overview", **{"as": ("guest", "wrong")}),
        GET("/api/overview", **{"as": None}),
    ],
    "health checks": [
        GET("/api/healthchecks/node"),
        GET("/api/healthchecks/node/{node}"),
        GET("/api/health/checks/alarms"),
        GET("/api/health/checks/local-alarms"),
        GET("/api/health/checks/virtual-hosts"),
        GET("/api/health/checks/node-is-mirror-sync-critical"),
        GET("/api/health/checks/node-is-quorum-critical"),
        GET("/api/health/checks/port-listener/{amqp_port}"),
        GET("/api/health/checks/port-listener/1"),
        GET("/api/health/checks/port-listener/notaport"),
        GET("/api/health/checks/protocol-listener/amqp"),
        GET("/api/health/checks/protocol-listener/amqp091"),
        GET("/api/health/checks/protocol-listener/stomp"),
        GET("/api/aliveness-test/%2F"),
        GET("/api/aliveness-test/nowhere"),
    ],
    "users: create, list, change, bulk-delete": [
        PUT("/api/users/alice", {"password": "secret", "tags": "monitoring"}),
        PUT("/api/users/bob", {"password_hash": "", "tags": ""}),
        PUT("/api/users/carol", {"password": "x", "tags": ["management", "policymaker"]}),
        PUT("/api/users/dave", {"tags": "administrator"}),
        GET("/api/users"),
        GET("/api/users/alice"),
        GET("/api/users/nobody"),
        GET("/api/users/without-permissions"),
        PUT("/api/users/alice", {"password": "secret", "tags": "management"}),
        GET("/api/users/alice"),
        POST("/api/users/bulk-delete", {"users": ["bob", "carol", "nobody"]}),
        GET("/api/users"),
        POST("/api/users/bulk-delete", {"users": "alice"}, deliberate=CRASH, hare=400),
        POST("/api/users/bulk-delete", {}),
        DELETE("/api/users/alice"),
        DELETE("/api/users/alice"),
    ],
    "vhosts: the creator gets permissions; metadata; limits": [
        PUT("/api/vhosts/v1", {"description": "first", "tags": "a,b"}),
        GET("/api/vhosts/v1"),
        GET("/api/vhosts/v1/permissions"),
        GET("/api/permissions/v1/guest"),
        {"op": "queue.declare", "name": "q1"},
        PUT("/api/queues/v1/qv", {"durable": True}),
        GET("/api/queues/v1"),
        PUT("/api/vhost-limits/v1/max-queues", {"value": 5}),
        PUT("/api/vhost-limits/v1/max-connections", {"value": 10}),
        PUT("/api/vhost-limits/v1/max-channels", {"value": 10}),
        PUT("/api/vhost-limits/v1/max-queues", {"value": "many"}),
        GET("/api/vhost-limits"),
        GET("/api/vhost-limits/v1"),
        DELETE("/api/vhost-limits/v1/max-queues"),
        DELETE("/api/vhost-limits/v1/max-queues"),
        GET("/api/vhost-limits/v1"),
        GET("/api/vhosts"),
        DELETE("/api/vhosts/v1"),
        GET("/api/vhosts/v1"),
        DELETE("/api/vhosts/v1"),
    ],
    "permissions and topic permissions": [
        PUT("/api/users/alice", {"password": "secret", "tags": ""}),
        PUT("/api/permissions/%2F/alice", {"configure": "^a", "write": ".*", "read": ""}),
        PUT("/api/permissions/%2F/alice", {"configure": "("}),
        PUT("/api/permissions/%2F/nobody", {"configure": ".*", "write": ".*", "read": ".*"}),
        PUT("/api/permissions/nowhere/alice", {"configure": ".*", "write": ".*", "read": ".*"}),
        GET("/api/permissions"),
        GET("/api/permissions/%2F/alice"),
        GET("/api/users/alice/permissions"),
        PUT("/api/topic-permissions/%2F/alice", {"exchange": "amq.topic", "write": "^a", "read": ".*"}),
        GET("/api/topic-permissions"),
        GET("/api/topic-permissions/%2F/alice"),
        GET("/api/users/alice/topic-permissions"),
        GET("/api/vhosts/%2F/topic-permissions"),
        DELETE("/api/topic-permissions/%2F/alice"),
        GET("/api/topic-permissions/%2F/alice"),
        DELETE("/api/permissions/%2F/alice"),
        GET("/api/permissions/%2F/alice"),
        DELETE("/api/permissions/%2F/alice"),
    ],
    "user limits": [
        PUT("/api/users/alice", {"password": "secret", "tags": ""}),
        PUT("/api/user-limits/alice/max-connections", {"value": 3}),
        PUT("/api/user-limits/alice/max-channels", {"value": 7}),
        PUT("/api/user-limits/alice/max-bananas", {"value": 7}),
        PUT("/api/user-limits/nobody/max-channels", {"value": 7}),
        GET("/api/user-limits"),
        GET("/api/user-limits/alice"),
        DELETE("/api/user-limits/alice/max-channels"),
        GET("/api/user-limits/alice"),
    ],
    "a user without the management tag": [
        PUT("/api/users/alice", {"password": "secret", "tags": ""}),
        PUT("/api/permissions/%2F/alice", {"configure": ".*", "write": ".*", "read": ".*"}),
        GET("/api/overview", **{"as": ALICE}),
        GET("/api/queues", **{"as": ALICE}),
        PUT("/api/users/alice", {"password": "secret", "tags": "management"}),
        GET("/api/whoami", **{"as": ALICE}),
        GET("/api/users", **{"as": ALICE}),
        GET("/api/vhosts", **{"as": ALICE}),
        PUT("/api/vhosts/v2", {}, **{"as": ALICE}),
        GET("/api/queues", **{"as": ALICE}),
    ],
    "queues: declare, read, purge, get, delete": [
        PUT("/api/queues/%2F/q1", {"durable": True, "arguments": {"x-max-length": 10, "x-queue-type": "classic"}}),
        PUT("/api/queues/%2F/q1", {"durable": False}),
        PUT("/api/queues/%2F/q2", {"durable": False, "auto_delete": False, "arguments": {"x-message-ttl": "soon"}}),
        PUT("/api/queues/%2F/q2", {"arguments": {"x-max-priority": 5, "x-single-active-consumer": True}}),
        PUT("/api/queues/nowhere/q1", {}),
        PUT("/api/queues/%2F/amq.q", {}),
        GET("/api/queues/%2F/q1"),
        GET("/api/queues/%2F/q2"),
        GET("/api/queues/%2F/q3"),
        POST("/api/exchanges/%2F/amq.default/publish", {"properties": {"delivery_mode": 2, "timestamp": 1700000000, "headers": {"h": 1}}, "routing_key": "q1", "payload": "one", "payload_encoding": "string"}),
        POST("/api/exchanges/%2F/amq.default/publish", {"properties": {}, "routing_key": "q1", "payload": "dHdv", "payload_encoding": "base64"}),
        POST("/api/exchanges/%2F/amq.default/publish", {"properties": {}, "routing_key": "q1", "payload": "x", "payload_encoding": "rot13"}),
        POST("/api/exchanges/%2F/amq.default/publish", {"properties": {}, "routing_key": "none", "payload": "x", "payload_encoding": "string"}),
        GET("/api/queues/%2F/q1"),
        POST("/api/queues/%2F/q1/get", {"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"}),
        POST("/api/queues/%2F/q1/get", {"count": 5, "ackmode": "ack_requeue_false", "encoding": "base64", "truncate": 2}),
        POST("/api/queues/%2F/q1/get", {"count": 1, "ackmode": "reject_requeue_true", "encoding": "auto"}),
        POST("/api/queues/%2F/q1/get", {"count": 1, "ackmode": "bogus", "encoding": "auto"}, deliberate=CRASH, hare=400),
        POST("/api/exchanges/%2F/amq.default/publish", {"properties": {}, "routing_key": "q1", "payload": "three", "payload_encoding": "string"}),
        GET("/api/queues/%2F/q1"),
        DELETE("/api/queues/%2F/q1/contents"),
        GET("/api/queues/%2F/q1"),
        GET("/api/queues"),
        GET("/api/queues/%2F"),
        GET("/api/queues/nowhere"),
        GET("/api/queues?page=1&page_size=1"),
        GET("/api/queues?name=q&use_regex=false&page=1"),
        DELETE("/api/queues/%2F/q1"),
        DELETE("/api/queues/%2F/q1"),
        DELETE("/api/queues/%2F/q2"),
    ],
    "a queue with consumers, unacked, persistent and paged-out counts": [
        {"op": "queue.declare", "name": "q1", "durable": True},
        {"op": "basic.publish", "exchange": "", "key": "q1", "body": "m1", "delivery_mode": 2},
        {"op": "basic.publish", "exchange": "", "key": "q1", "body": "m2"},
        {"op": "basic.publish", "exchange": "", "key": "q1", "body": "m3", "delivery_mode": 2},
        {"op": "basic.get", "queue": "q1"},
        {"op": "basic.qos", "count": 1},
        {"op": "basic.consume", "queue": "q1", "tag": "c1"},
        GET("/api/queues/%2F/q1"),
        GET("/api/consumers"),
        GET("/api/consumers/%2F"),
        {"op": "basic.cancel", "tag": "c1"},
        {"op": "basic.consume", "queue": "q1", "tag": "c2", "exclusive": True},
        GET("/api/queues/%2F/q1"),
        GET("/api/queues/%2F/q1/bindings"),
    ],
    "exchanges: declare, read, publish, delete": [
        PUT("/api/exchanges/%2F/e1", {"type": "topic", "durable": True, "arguments": {"alternate-exchange": "e2"}}),
        PUT("/api/exchanges/%2F/e1", {"type": "direct"}),
        PUT("/api/exchanges/%2F/e2", {"type": "bogus"}),
        PUT("/api/exchanges/%2F/e2", {"type": "fanout", "internal": True, "auto_delete": True}),
        PUT("/api/exchanges/%2F/amq.e", {"type": "fanout"}),
        GET("/api/exchanges/%2F/e1"),
        GET("/api/exchanges/%2F/e2"),
        GET("/api/exchanges/%2F/nowhere"),
        GET("/api/exchanges/%2F/amq.direct"),
        GET("/api/exchanges/%2F/amq.default"),
        GET("/api/exchanges"),
        GET("/api/exchanges/%2F"),
        POST("/api/exchanges/%2F/e1/publish", {"properties": {}, "routing_key": "k", "payload": "x", "payload_encoding": "string"}),
        POST("/api/exchanges/%2F/nowhere/publish", {"properties": {}, "routing_key": "k", "payload": "x", "payload_encoding": "string"}),
        POST("/api/exchanges/%2F/e2/publish", {"properties": {}, "routing_key": "k", "payload": "x", "payload_encoding": "string"}),
        GET("/api/exchanges/%2F/e1"),
        DELETE("/api/exchanges/%2F/amq.direct"),
        DELETE("/api/exchanges/%2F/e1?if-unused=true"),
        DELETE("/api/exchanges/%2F/e1"),
        DELETE("/api/exchanges/%2F/e1"),
    ],
    "bindings: create, list between two ends, delete": [
        PUT("/api/exchanges/%2F/e1", {"type": "topic"}),
        PUT("/api/exchanges/%2F/e2", {"type": "fanout"}),
        PUT("/api/queues/%2F/q1", {}),
        POST("/api/bindings/%2F/e/e1/q/q1", {"routing_key": "a.#"}),
        POST("/api/bindings/%2F/e/e1/q/q1", {"routing_key": ""}),
        POST("/api/bindings/%2F/e/e1/q/q1", {"routing_key": "h", "arguments": {"x": 1}}),
        POST("/api/bindings/%2F/e/e1/e/e2", {"routing_key": "b.*"}),
        POST("/api/bindings/%2F/e/e1/q/nowhere", {"routing_key": "k"}),
        POST("/api/bindings/%2F/e/nowhere/q/q1", {"routing_key": "k"}),
        POST("/api/bindings/%2F/e/e1/x/q1", {"routing_key": "k"}, deliberate=CRASH, hare=404),
        GET("/api/bindings/%2F/e/e1/q/q1"),
        GET("/api/bindings/%2F/e/e1/e/e2"),
        GET("/api/bindings/%2F/e/e1/q/nowhere"),
        GET("/api/bindings/%2F/e/nowhere/q/q1"),
        GET("/api/bindings/%2F/e/e1/q/q1/a.%23"),
        GET("/api/bindings/%2F/e/e1/q/q1/~"),
        GET("/api/bindings/%2F/e/e1/q/q1/nothing"),
        GET("/api/bindings"),
        GET("/api/bindings/%2F"),
        GET("/api/queues/%2F/q1/bindings"),
        GET("/api/exchanges/%2F/e1/bindings/source"),
        GET("/api/exchanges/%2F/e2/bindings/destination"),
        DELETE("/api/bindings/%2F/e/e1/q/q1/a.%23"),
        DELETE("/api/bindings/%2F/e/e1/q/q1/a.%23"),
        DELETE("/api/bindings/%2F/e/e1/e/e2/b.*"),
        GET("/api/bindings/%2F/e/e1/q/q1"),
    ],
    "connections and channels": [
        {"op": "queue.declare", "name": "q1"},
        {"op": "confirm.select"},
        {"op": "basic.publish", "exchange": "", "key": "q1", "body": "m1"},
        {"op": "basic.publish", "exchange": "", "key": "nowhere", "body": "m2", "mandatory": True},
        {"op": "basic.get", "queue": "q1", "no_ack": True},
        {"op": "basic.get", "queue": "q1", "no_ack": True},
        GET("/api/connections"),
        GET("/api/connections/{connection}"),
        GET("/api/connections/{connection}/channels"),
        GET("/api/connections/username/guest"),
        GET("/api/connections/username/nobody"),
        GET("/api/channels"),
        GET("/api/channels/{channel}"),
        GET("/api/vhosts/%2F/connections"),
        GET("/api/vhosts/%2F/channels"),
        GET("/api/connections/nowhere"),
        GET("/api/channels/nowhere"),
        GET("/api/vhosts/%2F"),
        GET("/api/overview"),
        DELETE("/api/connections/username/guest"),
    ],
    "policies: set, list, validate, clear": [
        PUT("/api/policies/%2F/p1", {"pattern": "^q", "definition": {"max-length": 2, "message-ttl": 60000}, "priority": 1, "apply-to": "queues"}),
        PUT("/api/policies/%2F/p1", {"pattern": "^q", "definition": {"max-length": 2, "message-ttl": 60000}, "priority": 1, "apply-to": "queues"}),
        PUT("/api/policies/%2F/p2", {"pattern": "^e", "definition": {"alternate-exchange": "ae"}}),
        PUT("/api/policies/%2F/p3", {"pattern": "^(?!amq\\.).*", "definition": {"ha-mode": "all", "queue-mode": "lazy"}, "priority": 0}),
        PUT("/api/policies/%2F/bad", {"pattern": "^q", "definition": {"max-length": "ten", "foo": 1}, "priority": "x", "apply-to": "bogus"}),
        PUT("/api/policies/%2F/bad", {"pattern": "^q", "definition": {"bananas": 1, "zebra": "x"}}),
        PUT("/api/policies/%2F/bad", {"pattern": "^q", "definition": {}}),
        PUT("/api/policies/%2F/bad", {"pattern": "(q", "definition": {"max-length": 1}}),
        PUT("/api/policies/%2F/bad", {"pattern": "[q", "definition": {"max-length": 1}}),
        PUT("/api/policies/%2F/bad", {"pattern": 5, "definition": {"expires": 0}}),
        PUT("/api/policies/%2F/bad", {"pattern": "^q", "definition": {"message-ttl": -1, "overflow": "drop-tail"}}),
        PUT("/api/policies/%2F/bad", {"pattern": "^q", "definition": {"ha-params": 2}}),
        PUT("/api/policies/%2F/bad", {"pattern": "^q", "definition": {"ha-mode": "exactly"}}),
        PUT("/api/policies/%2F/bad", {"pattern": "^q", "definition": {"ha-mode": "nodes", "ha-params": []}}),
        PUT("/api/policies/%2F/bad", {"pattern": "^q", "definition": {"dead-letter-strategy": "sometimes"}}),
        PUT("/api/policies/%2F/bad", {"definition": {"max-length": 1}}),
        PUT("/api/policies/%2F/bad", {"pattern": "^q"}),
        PUT("/api/policies/%2F/bad", {"pattern": "^q", "definition": "max-length"}, deliberate=CRASH, hare=400),
        PUT("/api/policies/nowhere/p1", {"pattern": "^q", "definition": {"max-length": 1}}),
        GET("/api/policies"),
        GET("/api/policies/%2F"),
        GET("/api/policies/nowhere"),
        GET("/api/policies/%2F/p1"),
        GET("/api/policies/%2F/nothing"),
        PUT("/api/operator-policies/%2F/o1", {"pattern": ".*", "definition": {"max-length": 1, "expires": 60000}, "priority": 0, "apply-to": "queues"}),
        PUT("/api/operator-policies/%2F/bad", {"pattern": ".*", "definition": {"dead-letter-exchange": "x", "max-length": "many"}}),
        GET("/api/operator-policies"),
        GET("/api/operator-policies/%2F"),
        GET("/api/operator-policies/%2F/o1"),
        DELETE("/api/operator-policies/%2F/o1"),
        DELETE("/api/operator-policies/%2F/o1"),
        DELETE("/api/policies/%2F/p2"),
        DELETE("/api/policies/%2F/p2"),
        GET("/api/policies"),
        PUT("/api/users/alice", {"password": "secret", "tags": "management"}),
        PUT("/api/permissions/%2F/alice", {"configure": ".*", "write": ".*", "read": ".*"}),
        GET("/api/policies", **{"as": ALICE}),
        GET("/api/policies/%2F/p1", **{"as": ALICE}),
        PUT("/api/policies/%2F/p4", {"pattern": "x", "definition": {"max-length": 1}}, **{"as": ALICE}),
        GET("/api/operator-policies/%2F/o1", **{"as": ALICE}),
        PUT("/api/users/alice", {"password": "secret", "tags": "policymaker"}),
        PUT("/api/policies/%2F/p4", {"pattern": "x", "definition": {"max-length": 1}}, **{"as": ALICE}),
        GET("/api/policies/%2F/p4", **{"as": ALICE}),
        PUT("/api/operator-policies/%2F/o2", {"pattern": "x", "definition": {"max-length": 1}}, **{"as": ALICE}),
        DELETE("/api/policies/%2F/p4", **{"as": ALICE}),
    ],
    "policies applied: limits, TTL, dead letters, alternate exchange, precedence": [
        # A queue declared after the policy; more published than it allows.
        PUT("/api/policies/%2F/limits", {"pattern": "^q", "definition": {"max-length": 2}, "priority": 1, "apply-to": "queues"}),
        PUT("/api/queues/%2F/q1", {"durable": True}),
        POST("/api/exchanges/%2F/amq.default/publish", {"properties": {}, "routing_key": "q1", "payload": "m1", "payload_encoding": "string"}),
        POST("/api/exchanges/%2F/amq.default/publish", {"properties": {}, "routing_key": "q1", "payload": "m2", "payload_encoding": "string"}),
        POST("/api/exchanges/%2F/amq.default/publish", {"properties": {}, "routing_key": "q1", "payload": "m3", "payload_encoding": "string"}),
        GET("/api/queues/%2F/q1"),
        POST("/api/queues/%2F/q1/get", {"count": 5, "ackmode": "ack_requeue_true", "encoding": "auto"}),
        # A queue's own x-max-length lower than the policy's wins; higher loses.
        PUT("/api/queues/%2F/q2", {"arguments": {"x-max-length": 1}}),
        PUT("/api/queues/%2F/q3", {"arguments": {"x-max-length": 10, "x-overflow": "reject-publish"}}),
        POST("/api/exchanges/%2F/amq.default/publish", {"properties": {}, "routing_key": "q2", "payload": "a", "payload_encoding": "string"}),
        POST("/api/exchanges/%2F/amq.default/publish", {"properties": {}, "routing_key": "q2", "payload": "b", "payload_encoding": "string"}),
        POST("/api/exchanges/%2F/amq.default/publish", {"properties": {}, "routing_key": "q3", "payload": "a", "payload_encoding": "string"}),
        POST("/api/exchanges/%2F/amq.default/publish", {"properties": {}, "routing_key": "q3", "payload": "b", "payload_encoding": "string"}),
        POST("/api/exchanges/%2F/amq.default/publish", {"properties": {}, "routing_key": "q3", "payload": "c", "payload_encoding": "string"}),
        GET("/api/queues/%2F/q2"),
        GET("/api/queues/%2F/q3"),
        # A policy set on queues that exist: a lower limit drops from the head at once.
        PUT("/api/queues/%2F/r1", {}),
        POST("/api/exchanges/%2F/amq.default/publish", {"properties": {}, "routing_key": "r1", "payload": "1", "payload_encoding": "string"}),
        POST("/api/exchanges/%2F/amq.default/publish", {"properties": {}, "routing_key": "r1", "payload": "2", "payload_encoding": "string"}),
        POST("/api/exchanges/%2F/amq.default/publish", {"properties": {}, "routing_key": "r1", "payload": "3", "payload_encoding": "string"}),
        PUT("/api/exchanges/%2F/dlx", {"type": "fanout"}),
        PUT("/api/queues/%2F/dlq", {}),
        POST("/api/bindings/%2F/e/dlx/q/dlq", {"routing_key": ""}),
        PUT("/api/policies/%2F/r", {"pattern": "^r", "definition": {"max-length": 1, "dead-letter-exchange": "dlx"}, "priority": 2}),
        GET("/api/queues/%2F/r1"),
        GET("/api/queues/%2F/dlq"),
        POST("/api/queues/%2F/r1/get", {"count": 5, "ackmode": "ack_requeue_true", "encoding": "auto"}),
        # A TTL of 0 from an operator policy: what is published to no consumer is gone.
        PUT("/api/operator-policies/%2F/ttl", {"pattern": "^r", "definition": {"message-ttl": 0}, "apply-to": "queues"}),
        POST("/api/exchanges/%2F/amq.default/publish", {"properties": {}, "routing_key": "r1", "payload": "4", "payload_encoding": "string"}),
        GET("/api/queues/%2F/r1"),
        DELETE("/api/operator-policies/%2F/ttl"),
        # Cleared: the queue takes messages without a limit again.
        DELETE("/api/policies/%2F/r"),
        POST("/api/exchanges/%2F/amq.default/publish", {"properties": {}, "routing_key": "r1", "payload": "5", "payload_encoding": "string"}),
        POST("/api/exchanges/%2F/amq.default/publish", {"properties": {}, "routing_key": "r1", "payload": "6", "payload_encoding": "string"}),
        GET("/api/queues/%2F/r1"),
        # An alternate exchange from a policy catches what its exchange cannot route.
        PUT("/api/exchanges/%2F/ae", {"type": "fanout"}),
        PUT("/api/queues/%2F/caught", {}),
        POST("/api/bindings/%2F/e/ae/q/caught", {"routing_key": ""}),
        PUT("/api/exchanges/%2F/events", {"type": "direct"}),
        PUT("/api/policies/%2F/ae", {"pattern": "^events$", "definition": {"alternate-exchange": "ae"}, "apply-to": "exchanges"}),
        GET("/api/exchanges/%2F/events"),
        POST("/api/exchanges/%2F/events/publish", {"properties": {}, "routing_key": "nobody", "payload": "x", "payload_encoding": "string"}),
        GET("/api/queues/%2F/caught"),
        # A delivery limit is a quorum queue's: no policy applies to a classic queue with it.
        PUT("/api/policies/%2F/quorum-only", {"pattern": "^only", "definition": {"delivery-limit": 2}, "priority": 5}),
        PUT("/api/queues/%2F/only1", {}),
        GET("/api/queues/%2F/only1"),
        GET("/api/definitions"),
        GET("/api/definitions/%2F"),
        POST("/api/definitions", {"policies": [{"vhost": "/", "name": "imported", "pattern": "^imp", "apply-to": "queues", "definition": {"max-length": 1}, "priority": 0}]}),
        PUT("/api/queues/%2F/imp1", {}),
        POST("/api/exchanges/%2F/amq.default/publish", {"properties": {}, "routing_key": "imp1", "payload": "1", "payload_encoding": "string"}),
        POST("/api/exchanges/%2F/amq.default/publish", {"properties": {}, "routing_key": "imp1", "payload": "2", "payload_encoding": "string"}),
        GET("/api/queues/%2F/imp1"),
        GET("/api/policies/%2F/imported"),
    ],
    "shovels: parameters, validation, state": [
        {"op": "queue.declare", "name": "q1", "durable": True},
        {"op": "basic.publish", "exchange": "", "key": "q1", "body": "m1", "delivery_mode": 2},
        {"op": "basic.publish", "exchange": "", "key": "q1", "body": "m2", "delivery_mode": 2},
        PUT("/api/parameters/shovel/%2F/s1", {"value": {"src-uri": "amqp://", "src-queue": "q1", "dest-uri": "amqp://", "dest-queue": "q2"}}),
        PUT("/api/parameters/shovel/%2F/s1", {"value": {"src-uri": "amqp://", "src-queue": "q1", "dest-uri": "amqp://", "dest-queue": "q2"}}),
        PUT("/api/parameters/shovel/%2F/bad", {"value": {"src-uri": "amqp://", "dest-uri": 5, "bogus": 1, "ack-mode": "sometimes"}}),
        PUT("/api/parameters/shovel/%2F/bad", {"value": {"src-queue": "a", "src-exchange": "x", "dest-queue": "q", "dest-exchange": "e", "src-delete-after": 5, "ack-mode": "no-ack"}}),
        PUT("/api/parameters/shovel/%2F/bad", {"value": {"src-uri": "http://x", "src-queue": "a", "dest-uri": "amqp://"}}),
        PUT("/api/parameters/shovel/%2F/bad", {"value": {"src-uri": "amqp://", "src-queue": "a", "dest-uri": "amqp://", "src-delete-after": "soon", "reconnect-delay": "x", "dest-add-forward-headers": 1}}),
        PUT("/api/parameters/shovel/%2F/bad", {"value": "nothing"}, deliberate=CRASH, hare=400),
        PUT("/api/parameters/shovel/%2F/bad", {}),
        PUT("/api/parameters/shovel/nowhere/s", {"value": {"src-uri": "amqp://", "src-queue": "a", "dest-uri": "amqp://"}}),
        PUT("/api/parameters/bogus/%2F/x", {"value": {}}),
        GET("/api/parameters", deliberate="RabbitMQ also lists the empty vhost-limits entry the cleanup of an earlier scenario leaves", hare=200),
        GET("/api/parameters/shovel"),
        GET("/api/parameters/shovel/%2F"),
        GET("/api/parameters/shovel/nowhere"),
        GET("/api/parameters/shovel/%2F/s1"),
        GET("/api/parameters/shovel/%2F/nothing"),
        GET("/api/queues/%2F/q2"),
        GET("/api/shovels"),
        GET("/api/shovels/%2F"),
        GET("/api/shovels/vhost/%2F/s1"),
        DELETE("/api/parameters/shovel/%2F/s1"),
        DELETE("/api/parameters/shovel/%2F/s1"),
        GET("/api/parameters/shovel"),
        PUT("/api/parameters/shovel/%2F/s2", {"value": {"src-uri": "amqp://", "src-queue": "q2", "dest-uri": "amqp://", "dest-queue": "q3", "src-delete-after": "queue-length"}}),
        GET("/api/queues/%2F/q3"),
        GET("/api/parameters/shovel/%2F/s2"),
        PUT("/api/parameters/shovel/%2F/s3", {"value": {"src-uri": "amqp://", "src-queue": "q3", "dest-uri": "amqp:///", "dest-queue": "q4", "ack-mode": "on-publish"}}),
        GET("/api/shovels/vhost/%2F/s3"),
        DELETE("/api/shovels/vhost/%2F/s3/restart"),
        GET("/api/shovels/vhost/%2F/s3"),
        DELETE("/api/shovels/vhost/%2F/s3"),
        GET("/api/parameters/shovel/%2F/s3"),
    ],
    "definitions": [
        PUT("/api/vhosts/v1", {}),
        PUT("/api/users/alice", {"password": "secret", "tags": "management"}),
        PUT("/api/permissions/v1/alice", {"configure": ".*", "write": "", "read": ".*"}),
        PUT("/api/queues/v1/q1", {"durable": True, "arguments": {"x-max-length": 3}}),
        PUT("/api/exchanges/v1/e1", {"type": "topic", "durable": True}),
        POST("/api/bindings/v1/e/e1/q/q1", {"routing_key": "a.#"}),
        GET("/api/definitions"),
        GET("/api/definitions/v1"),
        GET("/api/definitions/nowhere"),
        POST("/api/definitions/v1", {"queues": [{"name": "q2", "durable": True, "auto_delete": False, "arguments": {}}], "exchanges": [], "bindings": []}),
        GET("/api/queues/v1"),
        GET("/api/all-configuration"),
        DELETE("/api/vhosts/v1"),
    ],
}


# ---------------------------------------------------------------------------------------------
# Random scenarios

NAMES = ["q1", "q2", "e1", "e2"]
USERS = ["alice", "bob"]
VHOSTS = ["/", "v1"]


def gen_steps(seed, count):
    r = random.Random(seed)
    steps = []

    def vh():
        return q(r.choice(VHOSTS))

    for _ in range(count):
        roll = r.random()
        if roll < 0.08:
            u = r.choice(USERS)
            steps.append(PUT(f"/api/users/{u}", {"password": "pw", "tags": r.choice(["", "management", "administrator", "monitoring,policymaker"])}))
        elif roll < 0.11:
            steps.append(DELETE(f"/api/users/{r.choice(USERS)}"))
        elif roll < 0.17:
            steps.append(PUT(f"/api/vhosts/{q('v1')}", r.choice([{}, {"description": "d", "tags": "t"}])))
        elif roll < 0.19:
            steps.append(DELETE("/api/vhosts/v1"))
        elif roll < 0.26:
            steps.append(PUT(f"/api/permissions/{vh()}/{r.choice(USERS + ['guest'])}", {"configure": r.choice([".*", "^q", ""]), "write": r.choice([".*", ""]), "read": ".*"}))
        elif roll < 0.28:
            steps.append(DELETE(f"/api/permissions/{vh()}/{r.choice(USERS)}"))
        elif roll < 0.31:
            steps.append(PUT(f"/api/vhost-limits/{vh()}/{r.choice(['max-queues', 'max-connections'])}", {"value": r.choice([0, 1, 5, -1])}))
        elif roll < 0.40:
            name = r.choice(["q1", "q2"])
            steps.append(PUT(f"/api/queues/{vh()}/{name}", {"durable": r.random() < 0.5, "arguments": r.choice([{}, {"x-max-length": 2}, {"x-message-ttl": 60000}, {"x-queue-type": "classic"}])}))
        elif roll < 0.44:
            steps.append(DELETE(f"/api/queues/{vh()}/{r.choice(['q1', 'q2'])}"))
        elif roll < 0.52:
            steps.append(PUT(f"/api/exchanges/{vh()}/{r.choice(['e1', 'e2'])}", {"type": r.choice(["direct", "topic", "fanout"]), "durable": r.random() < 0.5}))
        elif roll < 0.55:
            steps.append(DELETE(f"/api/exchanges/{vh()}/{r.choice(['e1', 'e2'])}"))
        elif roll < 0.65:
            dtype = r.choice(["q", "e"])
            dest = r.choice(["q1", "q2"]) if dtype == "q" else r.choice(["e1", "e2"])
            steps.append(POST(f"/api/bindings/{vh()}/e/{r.choice(['e1', 'e2'])}/{dtype}/{dest}", {"routing_key": r.choice(["", "k", "a.#"])}))
        elif roll < 0.69:
            steps.append(DELETE(f"/api/bindings/{vh()}/e/{r.choice(['e1', 'e2'])}/q/{r.choice(['q1', 'q2'])}/{r.choice(['~', 'k', 'a.%23'])}"))
        elif roll < 0.80:
            ex = r.choice(["amq.default", "e1", "e2"])
            key = r.choice(["q1", "q2", "k", "a.b"])
            steps.append(POST(f"/api/exchanges/{vh()}/{ex}/publish", {"properties": r.choice([{}, {"delivery_mode": 2}, {"headers": {"x": 1}}]), "routing_key": key, "payload": "p", "payload_encoding": "string"}))
        elif roll < 0.88:
            steps.append(POST(f"/api/queues/{vh()}/{r.choice(['q1', 'q2'])}/get", {"count": r.choice([1, 2]), "ackmode": r.choice(["ack_requeue_true", "ack_requeue_false"]), "encoding": "auto"}))
        elif roll < 0.90:
            steps.append(DELETE(f"/api/queues/{vh()}/{r.choice(['q1', 'q2'])}/contents"))
        else:
            steps.append(GET(r.choice([
                "/api/queues", "/api/exchanges", "/api/bindings", "/api/users", "/api/vhosts",
                "/api/permissions", "/api/vhost-limits", f"/api/queues/{vh()}/q1", f"/api/exchanges/{vh()}/e1",
                f"/api/bindings/{vh()}/e/e1/q/q1", "/api/overview", f"/api/vhosts/{vh()}",
            ])))
    for path in ["/api/queues", "/api/exchanges", "/api/bindings", "/api/users", "/api/vhosts", "/api/permissions", "/api/vhost-limits"]:
        steps.append(GET(path))
    return steps
