"""Celery end to end: a real worker (celery from PyPI) and client, result backend rpc://,
against Hare. Covers plain tasks, retries with countdown, a failing task, and revoked and
expired tasks."""
import os
import signal
import subprocess
import sys

import pytest
from celery.exceptions import TaskRevokedError

from conftest import Hare, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def celery_env():
    hare = Hare()
    url = f"amqp://guest:guest@127.0.0.1:{hare.port}//"
    os.environ["HARE_BROKER_URL"] = url
    sys.path.insert(0, HERE)
    import celery_app

    celery_app.app.conf.broker_url = url
    log = open(os.path.join(hare.dir, "celery-worker.log"), "w")
    worker = subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "celery_app", "worker",
            "--pool=threads", "--concurrency=4", "--loglevel=INFO",
            "--without-gossip", "--without-mingle", "--hostname=hare-test@localhost",
        ],
        cwd=HERE,
        env={**os.environ, "HARE_BROKER_URL": url},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        def worker_up():
            if worker.poll() is not None:
                raise AssertionError("celery worker exited:\n" + open(log.name).read())
            return celery_app.app.control.ping(timeout=0.5)

        wait_for(worker_up, timeout=60, interval=0.2, what="the celery worker to answer a ping")
        yield celery_app
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
        hare.stop()


def test_hundreds_of_tasks_return_correct_results(celery_env):
    results = [celery_env.add.delay(i, i * 2) for i in range(300)]
    assert [r.get(timeout=60) for r in results] == [i * 3 for i in range(300)]


def test_retries_with_countdown_until_success(celery_env):
    results = [celery_env.flaky.delay(f"job{i}", 2) for i in range(5)]
    assert [r.get(timeout=60) for r in results] == [f"job{i} ok after 3 attempts" for i in range(5)]


def test_a_task_that_keeps_failing_reports_its_error(celery_env):
    r = celery_env.always_fails.delay()
    with pytest.raises(ValueError, match="never works"):
        r.get(timeout=60)
    assert r.failed()


def test_revoked_task_does_not_run(celery_env):
    r = celery_env.add.apply_async((1, 1), countdown=2)
    celery_env.app.control.revoke(r.id)
    with pytest.raises(TaskRevokedError):
        r.get(timeout=60)


def test_expired_task_does_not_run(celery_env):
    r = celery_env.add.apply_async((2, 2), countdown=1, expires=0.5)
    with pytest.raises(TaskRevokedError):
        r.get(timeout=60)
    # The worker is still healthy after all of it.
    assert celery_env.sleep_for.delay(0.1).get(timeout=60) == 0.1
