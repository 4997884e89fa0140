"""A small Celery application for the end-to-end test: the worker runs it against Hare."""
import os
import threading
import time

from celery import Celery

app = Celery("hare_celery_test", broker=os.environ.get("HARE_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"))
app.conf.update(
    result_backend="rpc://",
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

# Attempts per key, in the worker process (the thread pool shares it).
_attempts = {}
_lock = threading.Lock()


@app.task
def add(x, y):
    return x + y


@app.task(bind=True, max_retries=5)
def flaky(self, key, failures):
    """Fails `failures` times, retrying each time one second later, then succeeds."""
    with _lock:
        attempt = _attempts.get(key, 0) + 1
        _attempts[key] = attempt
    if attempt <= failures:
        raise self.retry(countdown=1, exc=RuntimeError(f"{key} attempt {attempt} failed"))
    return f"{key} ok after {attempt} attempts"


@app.task(bind=True, max_retries=1)
def always_fails(self):
    raise self.retry(countdown=0.2, exc=ValueError("this task never works"))


@app.task
def sleep_for(seconds):
    time.sleep(seconds)
    return seconds
