"""The console's web application (Starlette): server-rendered pages, a little JSON, and one event stream.

Pages: ``/market`` (open jobs, providers, the price chart, reservations for sale, pools),
``/job/{id}`` (a job's timeline, bids, leases, results, rulings and bill, live while it runs) and
``/account/{address}`` (money, jobs, earnings, slashes). ``/market/chart.json``,
``/market/reachability.json`` and ``/job/{id}.json`` give the same data as JSON; ``/job/{id}/live``
streams a running job as server-sent events. Bad input gets a page with one clear line and a
proper status: 400 (malformed), 404 (not on this market), 502 (a worker does not answer), 503 (the
chain does not answer); anything else a 500 without a traceback (it goes to the log).
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any, TypeVar

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from flopex.console.reader import WINDOWS, BadInput, MarketReader, NotFound, parse_address, parse_job_id
from marketplace.errors import ChainError, ConfigError, FlopexError, WorkerError
from marketplace.types import format_tokens

__all__ = ["create_app"]

log = logging.getLogger("flopex.console")
_T = TypeVar("_T")

_STATUS: list[tuple[type[BaseException], int, str]] = [
    (BadInput, 400, "Bad request"),
    (ConfigError, 400, "Bad request"),
    (NotFound, 404, "Not found"),
    (WorkerError, 502, "Worker not answering"),
    (ChainError, 503, "Chain not answering"),
]


def _package_dir(name: str) -> str:
    return str(resources.files("flopex.console").joinpath(name))


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(_package_dir("templates")), autoescape=select_autoescape(["html"]))
    env.filters["tokens"] = lambda v: "–" if v is None else format_tokens(int(v))
    env.filters["short"] = lambda a: f"{a[:8]}…{a[-4:]}" if isinstance(a, str) and len(a) > 14 else a
    env.filters["when"] = lambda t: (
        "–" if not t else datetime.fromtimestamp(int(t), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    )
    env.filters["gpuh"] = lambda s: f"{int(s) / 3600:.3f}"
    return env


def create_app(reader: MarketReader, *, poll_s: float = 1.0) -> Starlette:
    """The console over ``reader``; ``poll_s`` is how often a live job page looks for new blocks."""
    env = _environment()

    async def read(fn: Callable[..., _T], *args: Any) -> _T:
        """Sync with the chain, then run ``fn`` (blocking reads) off the event loop."""

        def run() -> _T:
            reader.sync()
            return fn(*args)

        return await run_in_threadpool(run)

    def page(name: str, request: Request, status: int = 200, **context: Any) -> HTMLResponse:
        html = env.get_template(name).render(request=request, source=reader.source(), windows=WINDOWS, **context)
        return HTMLResponse(html, status_code=status)

    async def index(request: Request) -> Response:
        return RedirectResponse("/market", status_code=302)

    async def market(request: Request) -> Response:
        window = request.query_params.get("window", "24h")

        def gather() -> dict[str, Any]:
            chart = reader.chart(window)
            return {
                "open_jobs": reader.open_jobs(),
                "providers": reader.providers(),
                "chart": chart,
                "for_sale": reader.reservations_for_sale(),
                "pools": reader.pools(),
            }

        data = await read(gather)
        return page("market.html", request, window=window, chart_json=json.dumps(data["chart"]), **data)

    async def chart_json(request: Request) -> Response:
        return JSONResponse(await read(reader.chart, request.query_params.get("window", "24h")))

    async def reachability_json(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(reader.reachability))

    async def job_search(request: Request) -> Response:
        job_id = parse_job_id(request.query_params.get("id", ""))
        return RedirectResponse(f"/job/{job_id}", status_code=302)

    async def job(request: Request) -> Response:
        job_id = parse_job_id(request.path_params["job_id"])
        data = await read(reader.job, job_id)
        return page("job.html", request, job=data, job_id=job_id)

    async def job_json(request: Request) -> Response:
        job_id = parse_job_id(request.path_params["job_id"])
        return JSONResponse(await read(reader.job, job_id))

    async def job_live(request: Request) -> Response:
        job_id = parse_job_id(request.path_params["job_id"])
        first = await read(reader.job, job_id)  # an unknown job is a 404 here, before any stream
        return StreamingResponse(
            _live(request, job_id, first), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    async def _live(request: Request, job_id: int, data: dict[str, Any]) -> AsyncIterator[str]:
        lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        stop = threading.Event()
        started = watching = False

        def pump() -> None:
            try:
                for item in reader.worker_events(job_id, stop):
                    lines.put(item)
            except FlopexError as exc:
                lines.put({"kind": "notice", "text": str(exc)})
            finally:
                lines.put(None)

        if not data["logs_allowed"]:
            yield _sse("notice", {"text": _no_key_notice(data)})
        last = ""
        try:
            while True:
                if await request.is_disconnected():
                    return
                if data["logs_allowed"] and not started and any(s["lease"] for s in data["slots"]):
                    started = watching = True  # the worker's log lines, once a slot is leased
                    threading.Thread(target=pump, name=f"console-watch-{job_id}", daemon=True).start()
                while True:
                    try:
                        item = lines.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        watching = False
                    else:
                        yield _sse(str(item["kind"]), item)
                html = env.get_template("job_live.html").render(job=data, job_id=job_id)
                if html != last:
                    last = html
                    yield _sse("state", {"status": data["status"], "block": reader.ledger.synced, "html": html})
                if data["terminal"] and not watching:
                    yield _sse("end", {"status": data["status"]})
                    return
                await asyncio.sleep(poll_s)
                try:
                    data = await read(reader.job, job_id)
                except ChainError as exc:
                    yield _sse("notice", {"text": f"the chain does not answer: {exc}"})
        finally:
            stop.set()

    def _no_key_notice(data: dict[str, Any]) -> str:
        requester = data["terms"]["requester"]
        if reader.requester is None:
            return (
                "log lines come from the worker, which answers only requests the requester signed: start the "
                f"console with the requester's account (--account {requester} or --dev N) to see them"
            )
        return f"log lines are shown only for jobs of {reader.requester.address}; this job's requester is {requester}"

    async def account_search(request: Request) -> Response:
        address = parse_address(request.query_params.get("address", ""))
        return RedirectResponse(f"/account/{address}", status_code=302)

    async def account(request: Request) -> Response:
        address = parse_address(request.path_params["address"])
        data = await read(reader.account, address)
        return page("account.html", request, account=data)

    async def account_json(request: Request) -> Response:
        address = parse_address(request.path_params["address"])
        return JSONResponse(await read(reader.account, address))

    async def failed(request: Request, exc: Exception) -> Response:
        status, title, message = 500, "Something went wrong", "the console failed to read this page; see its log"
        if isinstance(exc, HTTPException):
            status, title, message = exc.status_code, "Not found", f"no page at {request.url.path}"
        else:
            for kind, code, text in _STATUS:
                if isinstance(exc, kind):
                    status, title, message = code, text, str(exc)
                    break
            else:
                log.error("console: %s failed", request.url.path, exc_info=exc)
        if request.url.path.endswith(".json"):
            return JSONResponse({"error": message}, status_code=status)
        try:
            source = reader.source()
        except Exception:
            source = {}
        html = env.get_template("error.html").render(
            request=request, source=source, windows=WINDOWS, title=title, message=message, status=status
        )
        return HTMLResponse(html, status_code=status)

    routes = [
        Route("/", index),
        Route("/market", market),
        Route("/market/chart.json", chart_json),
        Route("/market/reachability.json", reachability_json),
        Route("/job", job_search),
        Route("/job/{job_id}.json", job_json),
        Route("/job/{job_id}/live", job_live),
        Route("/job/{job_id}", job),
        Route("/account", account_search),
        Route("/account/{address}.json", account_json),
        Route("/account/{address}", account),
        Mount("/static", app=StaticFiles(directory=_package_dir("static")), name="static"),
    ]
    handlers: dict[Any, Any] = {Exception: failed, HTTPException: failed}
    for kind, _code, _text in _STATUS:
        handlers[kind] = failed
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.state.reader = reader
    return app


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"
