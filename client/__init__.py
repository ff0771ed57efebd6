"""The Python SDK of Strata's REST API.

``AsyncClient`` (asyncio) and ``Client`` (plain code; it runs an ``AsyncClient`` on a
loop of its own) answer with the API's own response models (``TaskOut``, ``TaskDetail``,
``Schedule``, ...), validated; every refusal is an ``ApiError`` of its code's class.
``@strata.task`` (also ``strata.client.task``) marks a function as a python-kind handler
that ``submit`` can call on a worker.

It stands on ``strata.common`` alone (models, errors, the JSON-level REST client it is
built on, ``strata.common.client``): nothing of the master, the regions or the workers.
"""

from __future__ import annotations

from strata.client.aio import API_ENV, DEFAULT_API, TOKEN_ENV, AsyncClient, TaskWatch
from strata.client.handlers import (
    HandlerError,
    handler_name,
    parent_results,
    python_task,
    task,
)
from strata.client.sync import Client, SyncTaskWatch
from strata.common.api_models import (
    AttemptOut,
    BatchCreated,
    ConcurrencyKeyOut,
    Fire,
    Fired,
    FirePage,
    GraphEdge,
    GraphNode,
    RegionOut,
    Schedule,
    Stats,
    TaskDetail,
    TaskEventData,
    TaskGraph,
    TaskOut,
    TaskPage,
    TaskResultOut,
    WorkerOut,
)
from strata.common.client import (
    ApiError,
    Conflict,
    Internal,
    InvalidInput,
    MethodNotAllowed,
    NotFound,
    RateLimited,
    RequestEntityTooLarge,
    Unauthenticated,
    Unavailable,
)
from strata.common.client import Client as RestClient
from strata.common.errors import StrataError
from strata.common.models import TaskState

__all__ = [
    "API_ENV", "DEFAULT_API", "TOKEN_ENV",
    "ApiError", "AsyncClient", "AttemptOut", "BatchCreated", "Client", "ConcurrencyKeyOut",
    "Conflict", "Fire", "FirePage", "Fired", "GraphEdge", "GraphNode", "HandlerError",
    "Internal", "InvalidInput", "MethodNotAllowed", "NotFound", "RateLimited", "RegionOut",
    "RequestEntityTooLarge", "RestClient", "Schedule", "Stats", "StrataError",
    "SyncTaskWatch", "TaskDetail", "TaskEventData", "TaskGraph", "TaskOut", "TaskPage",
    "TaskResultOut", "TaskState", "TaskWatch", "Unauthenticated", "Unavailable", "WorkerOut",
    "handler_name", "parent_results", "python_task", "task",
]
