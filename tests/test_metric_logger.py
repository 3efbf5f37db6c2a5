"""MetricLogger's own bookkeeping while the tracking server cannot be reached (nothing listens on
the port): training is never blocked, values wait, and what was never logged is reported."""

import logging
import socket
import time

from polymae.orchestration.tracking import MetricLogger


def _closed_port_uri() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_values_wait_and_the_unlogged_steps_are_named(monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    logger = MetricLogger(_closed_port_uri(), "0" * 32, retry_s=0.2)
    start = time.monotonic()
    for step in (1, 2, 3):
        logger.log({"train/loss": 1.0 / step}, step)
    assert time.monotonic() - start < 0.5  # log() only queues
    with caplog.at_level(logging.ERROR):
        assert not logger.close(timeout_s=2)
    assert logger.failures >= 1 and [m.step for m in logger.pending] == [1, 2, 3]
    assert "3 metric values of steps 1…3 were NOT logged" in caplog.text


def test_the_oldest_values_are_dropped_past_the_cap_and_reported(monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    logger = MetricLogger(_closed_port_uri(), "0" * 32, max_pending=2, retry_s=0.2)
    for step in (1, 2, 3):
        logger.log({"train/loss": 1.0}, step)
    assert logger.dropped == 1 and [m.step for m in logger.pending] == [2, 3]
    with caplog.at_level(logging.ERROR):
        assert not logger.close(timeout_s=0.5)
    assert "1 older metric values were dropped" in caplog.text
