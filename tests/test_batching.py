"""The dynamic batcher and the request handler, in-process: what a batch reports, and
what a request gets when the server stops under it."""

import asyncio
import time

import numpy as np
import pytest

pytest.importorskip("starlette")
from starlette.requests import Request  # noqa: E402

from vaeanom.serving.app import SHUTTING_DOWN, Settings, _handler, _State  # noqa: E402
from vaeanom.serving.batching import DynamicBatcher, ShuttingDown  # noqa: E402
from vaeanom.serving.metrics import Metrics  # noqa: E402


def test_batches_whose_requests_all_timed_out_are_not_reported():
    """Only batches that run reach the metrics: 5 requests of 4 rows, a 0.3 s model and
    a 0.5 s timeout run two batches; the three requests that timed out queued are not
    reported as batches."""
    runs, reported = [], []

    def run(feeds):
        time.sleep(0.3)
        runs.append(len(feeds["x"]))
        return {"y": feeds["x"]}

    async def main():
        batcher = DynamicBatcher(run, 4, on_batch=lambda rows, waits: reported.append(rows))
        batcher.start()

        async def request():
            try:
                await asyncio.wait_for(batcher.submit({"x": np.zeros((4, 1))}), 0.5)
                return 200
            except asyncio.TimeoutError:
                return 503

        statuses = await asyncio.gather(*[request() for _ in range(5)])
        await asyncio.sleep(1.0)
        await batcher.stop()
        return statuses

    statuses = asyncio.run(main())
    assert statuses.count(503) >= 3 and len(runs) < 5 and reported == runs


def test_requests_still_queued_at_stop_get_shutting_down():
    async def main():
        batcher = DynamicBatcher(lambda feeds: feeds, 4)      # never started: all stay queued
        waiting = asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 1))}))
        await asyncio.sleep(0)
        await batcher.stop()
        return await asyncio.gather(waiting, return_exceptions=True)

    [error] = asyncio.run(main())
    assert isinstance(error, ShuttingDown)


def _request(path: str) -> Request:
    scope = {"type": "http", "method": "POST", "path": path, "headers": [],
             "path_params": {"name": "m"}, "query_string": b"", "client": None}
    return Request(scope)


def test_a_request_cancelled_by_the_shutdown_is_answered_503_not_500():
    """uvicorn cancels the requests still running when --graceful-timeout runs out."""
    state = _State(Settings("unused"), Metrics())

    async def cancelled(state, request):
        raise asyncio.CancelledError("timeout graceful shutdown exceeded")

    response = asyncio.run(_handler(state, cancelled)(_request("/v2/models/m/infer")))
    assert response.status_code == 503 and SHUTTING_DOWN.encode() in response.body
    exposition = state.metrics.exposition()[0].decode()
    assert 'status="503"' in exposition and 'status="500"' not in exposition
