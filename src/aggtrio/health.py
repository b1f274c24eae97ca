"""The standard gRPC health checking service (grpc.health.v1.Health) on the gRPC port.

The server is SERVING while every configured symbol has at least one live venue, so a load
balancer or Kubernetes probe takes a process out of rotation when it has nothing true to
say about some symbol, and puts it back once its venues have resynced. Shutting down
reports NOT_SERVING before streams end, as grpc's own servers do.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncGenerator
from contextlib import aclosing

import purerpc
import trio

from aggtrio._proto.grpc.health.v1.health_grpc import HealthServicer
from aggtrio._proto.grpc.health.v1.health_pb2 import (
    HealthCheckRequest,
    HealthCheckResponse,
    HealthListRequest,
    HealthListResponse,
)
from aggtrio.broadcast import Broadcast, BroadcastClosedError

log = logging.getLogger(__name__)

# "" asks about the server as a whole; the rest are the services whose health it reports.
ORDERBOOK_SERVICE = "orderbook.OrderbookAggregator"
SERVICES = ("", ORDERBOOK_SERVICE)

# Watch streams served at once. They are few (one per prober) and do not count against
# --max-subscribers, so probes keep working when clients have taken every slot.
MAX_WATCHES = 100
REFUSAL_LOG_INTERVAL = 10.0

SERVING = HealthCheckResponse.SERVING
NOT_SERVING = HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = HealthCheckResponse.SERVICE_UNKNOWN


class HealthService(HealthServicer):
    """Check, List and Watch over `all_symbols_live` (published by the aggregator)."""

    def __init__(self, all_symbols_live: Broadcast[bool], *, max_watches: int = MAX_WATCHES):
        self._all_live = all_symbols_live
        self._max_watches = max_watches
        self._watches = 0
        self._next_refusal_log = -math.inf

    @property
    def open_watches(self) -> int:
        return self._watches

    @property
    def serving(self) -> bool:
        """Every symbol has a live venue, and the server is not shutting down."""
        return bool(self._all_live.latest) and not self._all_live.closed

    def status(self) -> HealthCheckResponse.ServingStatus:
        """SERVING or NOT_SERVING, for every known service alike."""
        return SERVING if self.serving else NOT_SERVING

    async def Check(self, message: HealthCheckRequest) -> HealthCheckResponse:
        if message.service not in SERVICES:
            raise purerpc.NotFoundError(f"unknown service {message.service!r}")
        return HealthCheckResponse(status=self.status())

    async def List(self, message: HealthListRequest) -> HealthListResponse:
        response = HealthListResponse()
        for service in SERVICES:
            response.statuses[service].status = self.status()
        return response

    async def Watch(  # type: ignore[override]
        self, message: HealthCheckRequest
    ) -> AsyncGenerator[HealthCheckResponse, None]:
        if self._watches >= self._max_watches:
            self._log_refusal()
            raise purerpc.ResourceExhaustedError(
                f"the server is at its limit of {self._max_watches} health watches"
            )
        known = message.service in SERVICES
        self._watches += 1
        try:
            # A subscription, so that shutdown waits for this stream to end like the others.
            with self._all_live.subscription():
                async with aclosing(self._watch(known)) as responses:
                    async for response in responses:
                        yield response
        finally:
            self._watches -= 1

    async def _watch(self, known: bool) -> AsyncGenerator[HealthCheckResponse, None]:
        sent: HealthCheckResponse.ServingStatus | None = None
        seen = 0
        while True:
            status = self.status() if known else SERVICE_UNKNOWN
            if status != sent:
                sent = status
                yield HealthCheckResponse(status=status)
            try:
                # An unknown service may still appear (the spec keeps the stream open);
                # here it never does, so that stream just waits for shutdown.
                seen, _ = await self._all_live.next_after(seen)
            except BroadcastClosedError:
                if known and sent != NOT_SERVING:
                    yield HealthCheckResponse(status=NOT_SERVING)
                raise purerpc.UnavailableError("server is shutting down") from None

    def _log_refusal(self) -> None:
        now = trio.current_time()
        if now >= self._next_refusal_log:
            log.warning("refused a health watch: all %d watch slots are taken", self._max_watches)
            self._next_refusal_log = now + REFUSAL_LOG_INTERVAL
