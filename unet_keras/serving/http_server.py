"""The REST port: `unet_keras.serving.rest_api` and the Prometheus page over HTTP/1.1, on
aiohttp, in a thread of its own.

Like TF Serving's HTTP server: every path under /v1/ goes to the REST API, the metrics page
(when enabled) to its path, anything else is 404. Bounded like the gRPC port: a body
larger than --max-message-bytes is refused (413) before it is read, past
--max-concurrent-requests calls in progress a call is answered 429 (RESOURCE_EXHAUSTED)
at once, and the work runs on --threads threads, off the event loop. With --tls-cert the
REST port speaks HTTPS, with the same certificate and client verification as gRPC (TF
Serving's REST port is plain HTTP only).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from unet_keras.serving.metrics import Metrics
from unet_keras.serving.models import ModelRegistry
from unet_keras.serving.rest_api import API_PATH, error_body, handle

log = logging.getLogger(__name__)

_JSON = "application/json"


class RestServer:
    """The REST API of a registry on HOST:PORT; `start` binds, `stop` drains and closes."""

    def __init__(
        self,
        registry: ModelRegistry,
        host: str,
        port: int,
        *,
        threads: int,
        max_body_bytes: int,
        max_concurrent_requests: int,
        max_request_batch: int | None = None,
        timeout_ms: int = 0,
        body_timeout: float = 30.0,
        idle_timeout: float = 15.0,
        cors: bool = False,
        metrics: Metrics | None = None,
        prometheus_path: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.registry = registry
        self.host, self.port = host, port
        self.metrics = metrics
        self.prometheus_path = prometheus_path
        self._ssl_context = ssl_context
        self._max_body = max_body_bytes
        self._max_concurrent = max_concurrent_requests
        self._timeout_ms, self._cors = timeout_ms, cors
        self._max_request_batch = max_request_batch
        self._body_timeout, self._idle_timeout = body_timeout, idle_timeout
        self._in_progress = 0
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="rest")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rest", daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> int:
        """Listens; returns the port (OSError when it cannot)."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._open(), self._loop)
        try:
            self.port = future.result()
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            raise
        return self.port

    async def _open(self) -> int:
        app = web.Application(client_max_size=self._max_body)
        app.router.add_route("*", "/{tail:.*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0)
        await self._runner.setup()
        # reuse_port off: a port another server holds must fail here.
        site = web.TCPSite(
            self._runner, self.host, self.port, reuse_port=False, ssl_context=self._ssl_context
        )
        await site.start()
        return site._server.sockets[0].getsockname()[1]  # the port bound for port 0

    def stop(self, grace_seconds: float) -> None:
        """Stops taking calls, lets those in progress finish (up to `grace_seconds`)."""
        if self._runner is None:
            return

        async def close() -> None:
            await self._runner.cleanup()

        deadline = time.monotonic() + grace_seconds
        while self._in_progress and time.monotonic() < deadline:
            time.sleep(0.05)
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=max(grace_seconds, 1))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _serve(self, request: web.Request) -> web.Response:
        path = request.path
        if self.prometheus_path is not None and path == self.prometheus_path:
            page = self.metrics.page() if self.metrics is not None else ""
            return web.Response(text=page, content_type="text/plain")
        if not API_PATH.fullmatch(path):
            return web.Response(status=404, text="", content_type="text/plain")
        if self._in_progress >= self._max_concurrent:
            return _json_response(
                429,
                error_body(
                    f"More than {self._max_concurrent} requests in progress; try again later"
                ),
            )
        self._in_progress += 1
        start = time.perf_counter()
        try:
            if request.content_length is not None and request.content_length > self._max_body:
                return self._too_large(request.content_length)
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return self._too_large(None)
            reply = await self._loop.run_in_executor(
                self._pool, handle, self.registry, request.method, path, body
            )
        finally:
            self._in_progress -= 1
        if self.metrics is not None:
            elapsed = (time.perf_counter() - start) * 1e6
            self.metrics.request(reply.model, reply.api, "REST", reply.code.name, elapsed)
        return _json_response(reply.http_status, reply.body)

    def _too_large(self, size: int | None) -> web.Response:
        told = f"{size} bytes" if size is not None else "more"
        return _json_response(
            413,
            error_body(
                f"Request body of {told} is larger than this server's limit of "
                f"{self._max_body} bytes (--max-message-bytes)"
            ),
        )


def _json_response(status: int, body: str) -> web.Response:
    return web.Response(status=status, text=body, content_type=_JSON)
