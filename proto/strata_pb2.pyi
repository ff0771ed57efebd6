from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_STARTED: _ClassVar[EventType]
    EVENT_TYPE_SUCCEEDED: _ClassVar[EventType]
    EVENT_TYPE_FAILED: _ClassVar[EventType]
    EVENT_TYPE_RETURNED: _ClassVar[EventType]
    EVENT_TYPE_EVICTED: _ClassVar[EventType]
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_STARTED: EventType
EVENT_TYPE_SUCCEEDED: EventType
EVENT_TYPE_FAILED: EventType
EVENT_TYPE_RETURNED: EventType
EVENT_TYPE_EVICTED: EventType

class TaskSpec(_message.Message):
    __slots__ = ("id", "attempt", "kind", "payload_json", "timeout_s", "lease_expires_at", "parent_outputs_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    PARENT_OUTPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    attempt: int
    kind: str
    payload_json: str
    timeout_s: float
    lease_expires_at: float
    parent_outputs_json: str
    def __init__(self, id: _Optional[str] = ..., attempt: _Optional[int] = ..., kind: _Optional[str] = ..., payload_json: _Optional[str] = ..., timeout_s: _Optional[float] = ..., lease_expires_at: _Optional[float] = ..., parent_outputs_json: _Optional[str] = ...) -> None: ...

class TaskEvent(_message.Message):
    __slots__ = ("task_id", "attempt", "type", "worker_id", "started_at", "finished_at", "has_exit_code", "exit_code", "output", "error", "stderr", "output_truncated", "stderr_truncated", "killed_processes", "timed_out", "start_unreported")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    HAS_EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    STDERR_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    KILLED_PROCESSES_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    START_UNREPORTED_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    type: EventType
    worker_id: str
    started_at: float
    finished_at: float
    has_exit_code: bool
    exit_code: int
    output: str
    error: str
    stderr: str
    output_truncated: bool
    stderr_truncated: bool
    killed_processes: int
    timed_out: bool
    start_unreported: bool
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., type: _Optional[_Union[EventType, str]] = ..., worker_id: _Optional[str] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., has_exit_code: _Optional[bool] = ..., exit_code: _Optional[int] = ..., output: _Optional[str] = ..., error: _Optional[str] = ..., stderr: _Optional[str] = ..., output_truncated: _Optional[bool] = ..., stderr_truncated: _Optional[bool] = ..., killed_processes: _Optional[int] = ..., timed_out: _Optional[bool] = ..., start_unreported: _Optional[bool] = ...) -> None: ...

class TaskRef(_message.Message):
    __slots__ = ("task_id", "attempt")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("id", "capacity", "running", "last_heartbeat", "health_address")
    ID_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    HEALTH_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    id: str
    capacity: int
    running: int
    last_heartbeat: float
    health_address: str
    def __init__(self, id: _Optional[str] = ..., capacity: _Optional[int] = ..., running: _Optional[int] = ..., last_heartbeat: _Optional[float] = ..., health_address: _Optional[str] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("region", "address")
    REGION_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    region: str
    address: str
    def __init__(self, region: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("heartbeat_interval_s", "lease_s")
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval_s: float
    lease_s: float
    def __init__(self, heartbeat_interval_s: _Optional[float] = ..., lease_s: _Optional[float] = ...) -> None: ...

class RegionHeartbeat(_message.Message):
    __slots__ = ("region", "address", "capacity", "running", "queued", "max_outstanding", "workers", "held", "built_at")
    REGION_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTSTANDING_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    BUILT_AT_FIELD_NUMBER: _ClassVar[int]
    region: str
    address: str
    capacity: int
    running: int
    queued: int
    max_outstanding: int
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    held: _containers.RepeatedCompositeFieldContainer[TaskRef]
    built_at: float
    def __init__(self, region: _Optional[str] = ..., address: _Optional[str] = ..., capacity: _Optional[int] = ..., running: _Optional[int] = ..., queued: _Optional[int] = ..., max_outstanding: _Optional[int] = ..., workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ..., held: _Optional[_Iterable[_Union[TaskRef, _Mapping]]] = ..., built_at: _Optional[float] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("known",)
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    known: bool
    def __init__(self, known: _Optional[bool] = ...) -> None: ...

class ReportRequest(_message.Message):
    __slots__ = ("region", "events")
    REGION_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    region: str
    events: _containers.RepeatedCompositeFieldContainer[TaskEvent]
    def __init__(self, region: _Optional[str] = ..., events: _Optional[_Iterable[_Union[TaskEvent, _Mapping]]] = ...) -> None: ...

class ReportReply(_message.Message):
    __slots__ = ("applied", "stale")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    applied: int
    stale: _containers.RepeatedCompositeFieldContainer[TaskRef]
    def __init__(self, applied: _Optional[int] = ..., stale: _Optional[_Iterable[_Union[TaskRef, _Mapping]]] = ...) -> None: ...

class HandBackRequest(_message.Message):
    __slots__ = ("region", "tasks", "reason")
    REGION_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    region: str
    tasks: _containers.RepeatedCompositeFieldContainer[TaskRef]
    reason: str
    def __init__(self, region: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[TaskRef, _Mapping]]] = ..., reason: _Optional[str] = ...) -> None: ...

class HandBackReply(_message.Message):
    __slots__ = ("returned",)
    RETURNED_FIELD_NUMBER: _ClassVar[int]
    returned: int
    def __init__(self, returned: _Optional[int] = ...) -> None: ...

class DelegateRequest(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskSpec]
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskSpec, _Mapping]]] = ...) -> None: ...

class DelegateReply(_message.Message):
    __slots__ = ("accepted", "rejected")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    accepted: _containers.RepeatedCompositeFieldContainer[TaskRef]
    rejected: _containers.RepeatedCompositeFieldContainer[TaskRef]
    def __init__(self, accepted: _Optional[_Iterable[_Union[TaskRef, _Mapping]]] = ..., rejected: _Optional[_Iterable[_Union[TaskRef, _Mapping]]] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskRef]
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskRef, _Mapping]]] = ...) -> None: ...

class CancelReply(_message.Message):
    __slots__ = ("cancelled",)
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    cancelled: int
    def __init__(self, cancelled: _Optional[int] = ...) -> None: ...

class WorkerHello(_message.Message):
    __slots__ = ("worker_id", "capacity", "health_address", "running")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    HEALTH_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    capacity: int
    health_address: str
    running: _containers.RepeatedCompositeFieldContainer[TaskRef]
    def __init__(self, worker_id: _Optional[str] = ..., capacity: _Optional[int] = ..., health_address: _Optional[str] = ..., running: _Optional[_Iterable[_Union[TaskRef, _Mapping]]] = ...) -> None: ...

class WorkerBeat(_message.Message):
    __slots__ = ("running", "draining")
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    running: int
    draining: bool
    def __init__(self, running: _Optional[int] = ..., draining: _Optional[bool] = ...) -> None: ...

class WorkerMessage(_message.Message):
    __slots__ = ("hello", "beat", "events")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    BEAT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    hello: WorkerHello
    beat: WorkerBeat
    events: EventBatch
    def __init__(self, hello: _Optional[_Union[WorkerHello, _Mapping]] = ..., beat: _Optional[_Union[WorkerBeat, _Mapping]] = ..., events: _Optional[_Union[EventBatch, _Mapping]] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("events", "seq")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[TaskEvent]
    seq: int
    def __init__(self, events: _Optional[_Iterable[_Union[TaskEvent, _Mapping]]] = ..., seq: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class Assign(_message.Message):
    __slots__ = ("tasks", "ack")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskSpec]
    ack: int
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskSpec, _Mapping]]] = ..., ack: _Optional[int] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("heartbeat_interval_s",)
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval_s: float
    def __init__(self, heartbeat_interval_s: _Optional[float] = ...) -> None: ...

class RegionMessage(_message.Message):
    __slots__ = ("welcome", "assign", "cancel", "ack")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ASSIGN_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    assign: Assign
    cancel: CancelRequest
    ack: Ack
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., assign: _Optional[_Union[Assign, _Mapping]] = ..., cancel: _Optional[_Union[CancelRequest, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ...) -> None: ...
