"""The REST port: `unet_keras.server.rest_api` and the Prometheus page over HTTP/1.1, on
aiohttp, in a thread of its own.

As in TF Serving's HTTP server (model_servers/http_server.cc, util/net_http):
- every path under /v1/ goes to the REST API, the metrics page (when enabled) to its
  path, anything else is 404;
- a body whose Content-Encoding contains "gzip" is inflated, to at most 100 MiB
  (ZLib::kMaxUncompressedBytes; --max-message-bytes if smaller), and the size its gzip
  trailer states is checked before inflating; a body that cannot be inflated becomes
  empty, answered 400 "JSON Parse error: The document is empty";
- --rest_api_timeout_in_ms bounds a Predict's graph run: 504 `{"error": "Timed out
  waiting for notification"}` (see `rest_api`);
- with --rest_api_enable_cors_support, every answer under /v1/ (errors too, not the
  metrics page nor a 404 elsewhere) carries exactly TF Serving's three CORS headers;
- OPTIONS under /v1/ is answered 200 with an empty body when the Origin header holds
  http:// or https:// anywhere (RE2::PartialMatch), else 400 with an empty body, whether
  or not CORS is on.

Bounded like the gRPC port, where TF Serving's REST port is not (deviations):
- a body larger than --max-message-bytes is refused (413) before it is read; inflating
  also stops as soon as more comes out than the trailer stated (a trailer may lie), so no
  more than the limit is ever held;
- at most --max-concurrent-requests calls are at work (parsing, queued for or on the
  --rest_api_num_threads pool); past that a call is answered 429 (RESOURCE_EXHAUSTED) at
  once, before its body is read. A call takes that slot only once its body has arrived;
- bodies that did not come with their headers are read by at most
  --max-concurrent-requests calls at once (more get 429), each within
  --rest-body-timeout-seconds from its headers, else 408 and the connection closes (after
  aiohttp's lingering close, up to 10 s of reading and dropping what still comes, so
  that a client still sending gets its answer); so slow senders hold no work slot, and a
  reading slot for a bounded time;
- a connection is closed after --rest-idle-timeout-seconds without a request (from its
  opening or its last answer: headers that take longer are cut too), and the process's
  open-file limit is raised to its hard limit, so idle connections cannot take the
  port's sockets for long;
- work not yet started when its client has gone is dropped (counted CANCELLED). A graph
  run already started cannot be stopped from here: it ends at the REST timeout (as in TF
  Serving) or when the server stops, and keeps its slot until then;
- an exception left unhandled is logged and answered 500 in TF Serving's
  `{"error": ...}` shape, never with aiohttp's page. (HTTP framing errors, such as a
  malformed chunk size in the first packet, get aiohttp's own 400, as TF Serving's get
  libevent's.)
Other deviations: a gzip body that cannot be inflated gets the reason added to TF
Serving's message; OPTIONS calls are not counted in the metrics; with --tls-cert the
REST port speaks HTTPS, with the same certificate and client verification as gRPC (TF
Serving's REST port is plain HTTP only). `stop` closes the listening socket first, lets
calls in progress finish for up to its grace period, then closes every connection; it
never raises and returns within the grace period and a few seconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import re
import resource
import ssl
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from unet_keras.server.gzip_body import GZIP_LIMIT, GzipError, inflate_gzip
from unet_keras.server.models import ModelRegistry
from unet_keras.server.prometheus import Metrics
from unet_keras.server.rest_api import API_PATH, RestReply, handle, refusal

log = logging.getLogger(__name__)

_JSON = "application/json"
# http_rest_api_util.cc's AddCORSHeaders.
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET",
    "Access-Control-Allow-Headers": "Content-Type",
}
# http_server.cc: a preflight's Origin must partially match this (RE2::PartialMatch).
_ORIGIN = re.compile(r"https?://")
# How long closing may take beyond the grace period.
_CLOSE_SECONDS = 2.0


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
        self._gzip_limit = min(GZIP_LIMIT, max_body_bytes)
        self._max_concurrent = max_concurrent_requests
        self._timeout_ms, self._cors = timeout_ms, cors
        self._max_request_batch = max_request_batch
        self._body_timeout, self._idle_timeout = body_timeout, idle_timeout
        # Both counted on the event loop's thread only.
        self._in_progress = 0  # calls whose body has arrived, until their work ends
        self._reading = 0  # calls whose body is still arriving
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="rest")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rest", daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> int:
        """Listens; returns the port (OSError when it cannot)."""
        _raise_open_file_limit()
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
        self._runner = web.AppRunner(
            app,
            access_log=None,
            # Positive: aiohttp reads 0 as "wait for handlers forever".
            shutdown_timeout=0.1,
            keepalive_timeout=self._idle_timeout,
            # Bodies are inflated here, within a limit, not by aiohttp.
            auto_decompress=False,
            # A client that leaves cancels its call: work not yet started never starts.
            handler_cancellation=True,
        )
        await self._runner.setup()
        # reuse_port off: a port another server holds must fail here.
        site = web.TCPSite(
            self._runner, self.host, self.port, reuse_port=False, ssl_context=self._ssl_context
        )
        await site.start()
        return site._server.sockets[0].getsockname()[1]  # the port bound for port 0

    def stop(self, grace_seconds: float) -> None:
        """Stops listening at once, lets calls in progress finish for up to
        `grace_seconds`, then closes every connection. Never raises; returns within
        `grace_seconds` and a few seconds (work still running is the caller's to cancel)."""
        if self._runner is None or not self._thread.is_alive():
            return
        deadline = time.monotonic() + grace_seconds
        self._run_on_loop(self._stop_listening())
        while (self._in_progress or self._reading) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._run_on_loop(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_CLOSE_SECONDS)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _stop_listening(self) -> None:
        """Closes the listening sockets, and the connections waiting for a request; calls
        in progress go on."""
        for site in list(self._runner.sites):
            await site.stop()
        if self._runner.server is not None:
            self._runner.server.pre_shutdown()

    def _run_on_loop(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Runs a coroutine on the server's loop for up to _CLOSE_SECONDS; logs, never
        raises, if it fails or takes longer."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            future.result(timeout=_CLOSE_SECONDS)
        except concurrent.futures.TimeoutError:
            future.cancel()
            log.warning("The REST port took over %.0f s to close; leaving it", _CLOSE_SECONDS)
        except Exception:
            log.exception("Closing the REST port failed")

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        """Routes a request; an exception left unhandled is logged and answered 500 in TF
        Serving's JSON shape."""
        path = request.path
        if self.prometheus_path is not None and path == self.prometheus_path:
            page = self.metrics.page() if self.metrics is not None else ""
            return web.Response(text=page, content_type="text/plain")
        if not API_PATH.fullmatch(path):
            return web.Response(status=404, text="", content_type="text/plain")
        try:
            response = await self._api(request)
        except Exception as error:  # a bug: visible in the log, answered as TF Serving does
            log.exception("REST %s %s failed", request.method, path)
            reply = refusal(
                request.method, path, grpc.StatusCode.INTERNAL, f"Internal error: {error!r}"
            )
            response = self._answer(reply)
        if self._cors:
            response.headers.update(CORS_HEADERS)
        return response

    async def _api(self, request: web.Request) -> web.StreamResponse:
        """A REST API call: refused at once when busy, its body read within the limits,
        then its work run on the pool."""
        if request.method == "OPTIONS":
            return _preflight(request)
        start = time.perf_counter()
        # Before the body is read: a flood of calls costs no memory.
        if self._in_progress >= self._max_concurrent:
            return self._refuse(request, start, *self._busy())
        body = await self._read_body(request, start)
        if isinstance(body, web.StreamResponse):
            return body
        if self._in_progress >= self._max_concurrent:
            return self._refuse(request, start, *self._busy())
        if request.transport is None or request.transport.is_closing():
            return self._gone(request, start)
        return self._answer(await self._run(request, body, start))

    async def _run(self, request: web.Request, body: bytes, start: float) -> RestReply:
        """The call's work on the pool. It holds a slot until it ends, even when its client
        leaves first: aiohttp then cancels this coroutine, and work not yet started is
        dropped, but a graph run cannot be stopped from here."""
        gzipped = "gzip" in request.headers.get("Content-Encoding", "")
        self._in_progress += 1
        future = self._pool.submit(self._work, request.method, request.path, body, gzipped, start)
        release = True
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:  # the client left, or the server stops
            if future.cancel():
                self._gone(request, start)
            elif not future.done():
                release = False
                future.add_done_callback(self._release_from_thread)
            raise
        finally:
            if release:
                self._in_progress -= 1

    def _busy(self) -> tuple[int, grpc.StatusCode, str]:
        return (
            429,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"More than {self._max_concurrent} requests in progress; try again later",
        )

    def _gone(self, request: web.Request, start: float) -> web.Response:
        """A call whose client has left: counted CANCELLED, its answer sent to nobody."""
        self._record(refusal(request.method, request.path, *_GONE), start)
        return web.Response(status=499)

    async def _read_body(self, request: web.Request, start: float) -> bytes | web.StreamResponse:
        """The body, or the answer that refuses it: too large (413), too slow (408), too
        many bodies arriving at once (429), malformed (400)."""
        size = request.content_length
        if size is not None and size > self._max_body:
            return self._too_large(request, start, size)
        # A body that came with its headers costs no wait: it needs no reading slot.
        arriving = not request.content.is_eof()
        if arriving and self._reading >= self._max_concurrent:
            return self._refuse(
                request,
                start,
                429,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"More than {self._max_concurrent} request bodies arriving at once; try "
                "again later",
            )
        self._reading += arriving
        try:
            return await asyncio.wait_for(request.read(), self._body_timeout)
        except TimeoutError:
            response = self._refuse(
                request,
                start,
                408,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"The request body did not arrive within {self._body_timeout:g} s "
                "(--rest-body-timeout-seconds)",
            )
            response.force_close()
            return response
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(request, start, None)
        except ConnectionError:  # the client left while sending
            return self._gone(request, start)
        except RequestPayloadError as error:  # a body the HTTP parser gave up on
            return self._refuse(
                request,
                start,
                400,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Malformed request body: {error}",
            )
        finally:
            self._reading -= arriving

    def _work(self, method: str, path: str, body: bytes, gzipped: bool, start: float) -> RestReply:
        """On a pool thread: inflates a gzip body, answers the call, counts it."""
        body_error = None
        try:
            if gzipped:
                try:
                    body = inflate_gzip(body, self._gzip_limit)
                except GzipError as error:
                    # As TF Serving: the body becomes empty; here the reason is told too.
                    body, body_error = b"", str(error)
                    log.info("REST %s %s: %s", method, path, error)
            reply = handle(
                self.registry,
                method,
                path,
                body,
                timeout_ms=self._timeout_ms,
                max_batch=self._max_request_batch,
                body_error=body_error,
            )
        except Exception as error:  # a bug: visible in the log, answered as TF Serving does
            log.exception("REST %s %s failed", method, path)
            reply = refusal(method, path, grpc.StatusCode.INTERNAL, f"Internal error: {error!r}")
        self._record(reply, start)
        return reply

    def _release_from_thread(self, _: concurrent.futures.Future) -> None:
        """Frees the slot of work whose client left, once that work ends."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server stopped
            self._loop.call_soon_threadsafe(self._release)

    def _release(self) -> None:
        self._in_progress -= 1

    def _record(self, reply: RestReply, start: float) -> None:
        if self.metrics is not None:
            elapsed = (time.perf_counter() - start) * 1e6
            self.metrics.request(reply.model, reply.api, "REST", reply.code.name, elapsed)

    def _refuse(
        self,
        request: web.Request,
        start: float,
        status: int,
        code: grpc.StatusCode,
        message: str,
    ) -> web.Response:
        """A call answered at the HTTP layer, counted in the metrics."""
        reply = refusal(request.method, request.path, code, message)
        self._record(reply, start)
        return _json_response(status, reply.body)

    def _too_large(self, request: web.Request, start: float, size: int | None) -> web.Response:
        told = f"{size} bytes" if size is not None else "more"
        return self._refuse(
            request,
            start,
            413,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"Request body of {told} is larger than this server's limit of "
            f"{self._max_body} bytes (--max-message-bytes)",
        )

    @staticmethod
    def _answer(reply: RestReply) -> web.Response:
        return _json_response(reply.http_status, reply.body)


# Work not started because its client had gone (TF Serving's code for it: 499).
_GONE = (grpc.StatusCode.CANCELLED, "The client closed the connection before its call ran")


def _preflight(request: web.Request) -> web.Response:
    """http_server.cc's answer to OPTIONS: 200 if the Origin names an http(s) origin,
    else 400; an empty body either way."""
    origin = request.headers.get("Origin", "")
    return web.Response(status=200 if _ORIGIN.search(origin) else 400)


def _json_response(status: int, body: str) -> web.Response:
    return web.Response(status=status, text=body, content_type=_JSON)


def _raise_open_file_limit() -> None:
    """Raises this process's open-file limit to its hard limit: each connection holds a
    file, and at the common soft limit of 1024 a thousand idle ones would stop the port
    accepting any other."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as error:
        log.warning("Could not raise the open-file limit: %s", error)
