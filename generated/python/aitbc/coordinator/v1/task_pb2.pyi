import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskPriority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_PRIORITY_UNSPECIFIED: _ClassVar[TaskPriority]
    TASK_PRIORITY_LOW: _ClassVar[TaskPriority]
    TASK_PRIORITY_NORMAL: _ClassVar[TaskPriority]
    TASK_PRIORITY_HIGH: _ClassVar[TaskPriority]
    TASK_PRIORITY_CRITICAL: _ClassVar[TaskPriority]
    TASK_PRIORITY_URGENT: _ClassVar[TaskPriority]

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATE_UNSPECIFIED: _ClassVar[TaskState]
    TASK_STATE_PENDING: _ClassVar[TaskState]
    TASK_STATE_ASSIGNED: _ClassVar[TaskState]
    TASK_STATE_RUNNING: _ClassVar[TaskState]
    TASK_STATE_COMPLETED: _ClassVar[TaskState]
    TASK_STATE_FAILED: _ClassVar[TaskState]
    TASK_STATE_CANCELLED: _ClassVar[TaskState]
    TASK_STATE_EXPIRED: _ClassVar[TaskState]

class BalancingStrategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BALANCING_STRATEGY_UNSPECIFIED: _ClassVar[BalancingStrategy]
    BALANCING_STRATEGY_LEAST_CONNECTIONS: _ClassVar[BalancingStrategy]
    BALANCING_STRATEGY_ROUND_ROBIN: _ClassVar[BalancingStrategy]
    BALANCING_STRATEGY_WEIGHTED_ROUND_ROBIN: _ClassVar[BalancingStrategy]
    BALANCING_STRATEGY_LEAST_RESPONSE_TIME: _ClassVar[BalancingStrategy]
    BALANCING_STRATEGY_RESOURCE_BASED: _ClassVar[BalancingStrategy]
    BALANCING_STRATEGY_CAPABILITY_BASED: _ClassVar[BalancingStrategy]
    BALANCING_STRATEGY_PREDICTIVE: _ClassVar[BalancingStrategy]
    BALANCING_STRATEGY_CONSISTENT_HASH: _ClassVar[BalancingStrategy]
TASK_PRIORITY_UNSPECIFIED: TaskPriority
TASK_PRIORITY_LOW: TaskPriority
TASK_PRIORITY_NORMAL: TaskPriority
TASK_PRIORITY_HIGH: TaskPriority
TASK_PRIORITY_CRITICAL: TaskPriority
TASK_PRIORITY_URGENT: TaskPriority
TASK_STATE_UNSPECIFIED: TaskState
TASK_STATE_PENDING: TaskState
TASK_STATE_ASSIGNED: TaskState
TASK_STATE_RUNNING: TaskState
TASK_STATE_COMPLETED: TaskState
TASK_STATE_FAILED: TaskState
TASK_STATE_CANCELLED: TaskState
TASK_STATE_EXPIRED: TaskState
BALANCING_STRATEGY_UNSPECIFIED: BalancingStrategy
BALANCING_STRATEGY_LEAST_CONNECTIONS: BalancingStrategy
BALANCING_STRATEGY_ROUND_ROBIN: BalancingStrategy
BALANCING_STRATEGY_WEIGHTED_ROUND_ROBIN: BalancingStrategy
BALANCING_STRATEGY_LEAST_RESPONSE_TIME: BalancingStrategy
BALANCING_STRATEGY_RESOURCE_BASED: BalancingStrategy
BALANCING_STRATEGY_CAPABILITY_BASED: BalancingStrategy
BALANCING_STRATEGY_PREDICTIVE: BalancingStrategy
BALANCING_STRATEGY_CONSISTENT_HASH: BalancingStrategy

class TaskRequirements(_message.Message):
    __slots__ = ("agent_type", "capabilities", "services", "labels", "agent_id", "min_health_score", "preferred_capabilities")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_HEALTH_SCORE_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    agent_type: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    services: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    agent_id: str
    min_health_score: float
    preferred_capabilities: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, agent_type: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., services: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., agent_id: _Optional[str] = ..., min_health_score: _Optional[float] = ..., preferred_capabilities: _Optional[_Iterable[str]] = ...) -> None: ...

class RetryPolicy(_message.Message):
    __slots__ = ("initial_backoff", "max_backoff", "backoff_multiplier")
    INITIAL_BACKOFF_FIELD_NUMBER: _ClassVar[int]
    MAX_BACKOFF_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    initial_backoff: _duration_pb2.Duration
    max_backoff: _duration_pb2.Duration
    backoff_multiplier: float
    def __init__(self, initial_backoff: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_backoff: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., backoff_multiplier: _Optional[float] = ...) -> None: ...

class TaskError(_message.Message):
    __slots__ = ("message", "type", "retryable", "details")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    message: str
    type: str
    retryable: bool
    details: _struct_pb2.Struct
    def __init__(self, message: _Optional[str] = ..., type: _Optional[str] = ..., retryable: _Optional[bool] = ..., details: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class TaskAttempt(_message.Message):
    __slots__ = ("attempt", "agent_id", "node_id", "assigned_at", "started_at", "ended_at", "outcome", "error")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    agent_id: str
    node_id: str
    assigned_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    outcome: TaskState
    error: TaskError
    def __init__(self, attempt: _Optional[int] = ..., agent_id: _Optional[str] = ..., node_id: _Optional[str] = ..., assigned_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., outcome: _Optional[_Union[TaskState, str]] = ..., error: _Optional[_Union[TaskError, _Mapping]] = ...) -> None: ...

class TaskTransition(_message.Message):
    __slots__ = ("state", "at", "attempt", "agent_id", "reason")
    STATE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    state: TaskState
    at: _timestamp_pb2.Timestamp
    attempt: int
    agent_id: str
    reason: str
    def __init__(self, state: _Optional[_Union[TaskState, str]] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempt: _Optional[int] = ..., agent_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "task_type", "state", "priority", "task_data", "requirements", "max_attempts", "attempt", "agent_id", "schedule_to_start_timeout", "start_to_close_timeout", "retry_policy", "request_id", "balancing_strategy", "routing_key", "result", "error", "attempts", "transitions", "created_at", "updated_at", "lease_expires_at", "dead_lettered", "submitted_by")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TASK_DATA_FIELD_NUMBER: _ClassVar[int]
    REQUIREMENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_TO_START_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    START_TO_CLOSE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RETRY_POLICY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BALANCING_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    ROUTING_KEY_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    TRANSITIONS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_BY_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    task_type: str
    state: TaskState
    priority: TaskPriority
    task_data: _struct_pb2.Struct
    requirements: TaskRequirements
    max_attempts: int
    attempt: int
    agent_id: str
    schedule_to_start_timeout: _duration_pb2.Duration
    start_to_close_timeout: _duration_pb2.Duration
    retry_policy: RetryPolicy
    request_id: str
    balancing_strategy: BalancingStrategy
    routing_key: str
    result: _struct_pb2.Struct
    error: TaskError
    attempts: _containers.RepeatedCompositeFieldContainer[TaskAttempt]
    transitions: _containers.RepeatedCompositeFieldContainer[TaskTransition]
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    lease_expires_at: _timestamp_pb2.Timestamp
    dead_lettered: bool
    submitted_by: str
    def __init__(self, task_id: _Optional[str] = ..., task_type: _Optional[str] = ..., state: _Optional[_Union[TaskState, str]] = ..., priority: _Optional[_Union[TaskPriority, str]] = ..., task_data: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., requirements: _Optional[_Union[TaskRequirements, _Mapping]] = ..., max_attempts: _Optional[int] = ..., attempt: _Optional[int] = ..., agent_id: _Optional[str] = ..., schedule_to_start_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., start_to_close_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retry_policy: _Optional[_Union[RetryPolicy, _Mapping]] = ..., request_id: _Optional[str] = ..., balancing_strategy: _Optional[_Union[BalancingStrategy, str]] = ..., routing_key: _Optional[str] = ..., result: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., error: _Optional[_Union[TaskError, _Mapping]] = ..., attempts: _Optional[_Iterable[_Union[TaskAttempt, _Mapping]]] = ..., transitions: _Optional[_Iterable[_Union[TaskTransition, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lease_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., dead_lettered: _Optional[bool] = ..., submitted_by: _Optional[str] = ...) -> None: ...

class SubmitTaskRequest(_message.Message):
    __slots__ = ("task_data", "task_type", "priority", "requirements", "max_attempts", "schedule_to_start_timeout", "start_to_close_timeout", "retry_policy", "request_id", "balancing_strategy", "routing_key")
    TASK_DATA_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    REQUIREMENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_TO_START_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    START_TO_CLOSE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RETRY_POLICY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BALANCING_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    ROUTING_KEY_FIELD_NUMBER: _ClassVar[int]
    task_data: _struct_pb2.Struct
    task_type: str
    priority: TaskPriority
    requirements: TaskRequirements
    max_attempts: int
    schedule_to_start_timeout: _duration_pb2.Duration
    start_to_close_timeout: _duration_pb2.Duration
    retry_policy: RetryPolicy
    request_id: str
    balancing_strategy: BalancingStrategy
    routing_key: str
    def __init__(self, task_data: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., task_type: _Optional[str] = ..., priority: _Optional[_Union[TaskPriority, str]] = ..., requirements: _Optional[_Union[TaskRequirements, _Mapping]] = ..., max_attempts: _Optional[int] = ..., schedule_to_start_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., start_to_close_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retry_policy: _Optional[_Union[RetryPolicy, _Mapping]] = ..., request_id: _Optional[str] = ..., balancing_strategy: _Optional[_Union[BalancingStrategy, str]] = ..., routing_key: _Optional[str] = ...) -> None: ...

class SubmitTaskResponse(_message.Message):
    __slots__ = ("task", "created")
    TASK_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    task: Task
    created: bool
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class SubmitTasksRequest(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[SubmitTaskRequest]
    def __init__(self, tasks: _Optional[_Iterable[_Union[SubmitTaskRequest, _Mapping]]] = ...) -> None: ...

class SubmitTasksResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SubmitTasksResult]
    def __init__(self, results: _Optional[_Iterable[_Union[SubmitTasksResult, _Mapping]]] = ...) -> None: ...

class StreamSubmitTasksRequest(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[SubmitTaskRequest]
    def __init__(self, tasks: _Optional[_Iterable[_Union[SubmitTaskRequest, _Mapping]]] = ...) -> None: ...

class StreamSubmitTasksResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SubmitTasksResult]
    def __init__(self, results: _Optional[_Iterable[_Union[SubmitTasksResult, _Mapping]]] = ...) -> None: ...

class SubmitTasksResult(_message.Message):
    __slots__ = ("task_id", "created", "created_at", "error")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    created: bool
    created_at: _timestamp_pb2.Timestamp
    error: BatchEntryError
    def __init__(self, task_id: _Optional[str] = ..., created: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[_Union[BatchEntryError, _Mapping]] = ...) -> None: ...

class BatchEntryError(_message.Message):
    __slots__ = ("code", "message", "field_violations")
    class FieldViolation(_message.Message):
        __slots__ = ("field", "description")
        FIELD_FIELD_NUMBER: _ClassVar[int]
        DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
        field: str
        description: str
        def __init__(self, field: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIELD_VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    field_violations: _containers.RepeatedCompositeFieldContainer[BatchEntryError.FieldViolation]
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., field_violations: _Optional[_Iterable[_Union[BatchEntryError.FieldViolation, _Mapping]]] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class GetTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: Task
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("states", "agent_id", "priorities", "dead_letter", "page_size", "page_token")
    STATES_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITIES_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[TaskState]
    agent_id: str
    priorities: _containers.RepeatedScalarFieldContainer[TaskPriority]
    dead_letter: bool
    page_size: int
    page_token: str
    def __init__(self, states: _Optional[_Iterable[_Union[TaskState, str]]] = ..., agent_id: _Optional[str] = ..., priorities: _Optional[_Iterable[_Union[TaskPriority, str]]] = ..., dead_letter: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks", "next_page_token")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    next_page_token: str
    def __init__(self, tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelTaskRequest(_message.Message):
    __slots__ = ("task_id", "reason")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    reason: str
    def __init__(self, task_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: Task
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ...) -> None: ...

class AcknowledgeTaskRequest(_message.Message):
    __slots__ = ("task_id", "agent_id", "fencing_token")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    agent_id: str
    fencing_token: str
    def __init__(self, task_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., fencing_token: _Optional[str] = ...) -> None: ...

class AcknowledgeTaskResponse(_message.Message):
    __slots__ = ("lease_expires_at",)
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    lease_expires_at: _timestamp_pb2.Timestamp
    def __init__(self, lease_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ExtendTaskLeaseRequest(_message.Message):
    __slots__ = ("task_id", "agent_id", "fencing_token", "lease_duration")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    agent_id: str
    fencing_token: str
    lease_duration: _duration_pb2.Duration
    def __init__(self, task_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., fencing_token: _Optional[str] = ..., lease_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ExtendTaskLeaseResponse(_message.Message):
    __slots__ = ("lease_expires_at",)
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    lease_expires_at: _timestamp_pb2.Timestamp
    def __init__(self, lease_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CompleteTaskRequest(_message.Message):
    __slots__ = ("task_id", "agent_id", "fencing_token", "result")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    agent_id: str
    fencing_token: str
    result: _struct_pb2.Struct
    def __init__(self, task_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., fencing_token: _Optional[str] = ..., result: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class CompleteTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: Task
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ...) -> None: ...

class FailTaskRequest(_message.Message):
    __slots__ = ("task_id", "agent_id", "fencing_token", "error")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    agent_id: str
    fencing_token: str
    error: TaskError
    def __init__(self, task_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., fencing_token: _Optional[str] = ..., error: _Optional[_Union[TaskError, _Mapping]] = ...) -> None: ...

class FailTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: Task
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ...) -> None: ...

class ReportTasksRequest(_message.Message):
    __slots__ = ("reports",)
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    reports: _containers.RepeatedCompositeFieldContainer[TaskReport]
    def __init__(self, reports: _Optional[_Iterable[_Union[TaskReport, _Mapping]]] = ...) -> None: ...

class StreamReportTasksRequest(_message.Message):
    __slots__ = ("reports",)
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    reports: _containers.RepeatedCompositeFieldContainer[TaskReport]
    def __init__(self, reports: _Optional[_Iterable[_Union[TaskReport, _Mapping]]] = ...) -> None: ...

class StreamReportTasksResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TaskReportResult]
    def __init__(self, results: _Optional[_Iterable[_Union[TaskReportResult, _Mapping]]] = ...) -> None: ...

class TaskReport(_message.Message):
    __slots__ = ("acknowledge", "complete", "fail", "extend_lease")
    ACKNOWLEDGE_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    FAIL_FIELD_NUMBER: _ClassVar[int]
    EXTEND_LEASE_FIELD_NUMBER: _ClassVar[int]
    acknowledge: AcknowledgeTaskRequest
    complete: CompleteTaskRequest
    fail: FailTaskRequest
    extend_lease: ExtendTaskLeaseRequest
    def __init__(self, acknowledge: _Optional[_Union[AcknowledgeTaskRequest, _Mapping]] = ..., complete: _Optional[_Union[CompleteTaskRequest, _Mapping]] = ..., fail: _Optional[_Union[FailTaskRequest, _Mapping]] = ..., extend_lease: _Optional[_Union[ExtendTaskLeaseRequest, _Mapping]] = ...) -> None: ...

class ReportTasksResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TaskReportResult]
    def __init__(self, results: _Optional[_Iterable[_Union[TaskReportResult, _Mapping]]] = ...) -> None: ...

class TaskReportResult(_message.Message):
    __slots__ = ("state", "lease_expires_at", "error")
    STATE_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    state: TaskState
    lease_expires_at: _timestamp_pb2.Timestamp
    error: BatchEntryError
    def __init__(self, state: _Optional[_Union[TaskState, str]] = ..., lease_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[_Union[BatchEntryError, _Mapping]] = ...) -> None: ...

class WatchTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class WatchTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: Task
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("tasks_submitted", "tasks_distributed", "tasks_completed", "tasks_failed", "tasks_cancelled", "tasks_expired", "avg_submit_to_assignment_ms", "p99_submit_to_assignment_ms", "load_balancer_stats", "queues")
    TASKS_SUBMITTED_FIELD_NUMBER: _ClassVar[int]
    TASKS_DISTRIBUTED_FIELD_NUMBER: _ClassVar[int]
    TASKS_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    TASKS_FAILED_FIELD_NUMBER: _ClassVar[int]
    TASKS_CANCELLED_FIELD_NUMBER: _ClassVar[int]
    TASKS_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    AVG_SUBMIT_TO_ASSIGNMENT_MS_FIELD_NUMBER: _ClassVar[int]
    P99_SUBMIT_TO_ASSIGNMENT_MS_FIELD_NUMBER: _ClassVar[int]
    LOAD_BALANCER_STATS_FIELD_NUMBER: _ClassVar[int]
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    tasks_submitted: int
    tasks_distributed: int
    tasks_completed: int
    tasks_failed: int
    tasks_cancelled: int
    tasks_expired: int
    avg_submit_to_assignment_ms: float
    p99_submit_to_assignment_ms: float
    load_balancer_stats: LoadBalancerStats
    queues: _containers.RepeatedCompositeFieldContainer[QueueStats]
    def __init__(self, tasks_submitted: _Optional[int] = ..., tasks_distributed: _Optional[int] = ..., tasks_completed: _Optional[int] = ..., tasks_failed: _Optional[int] = ..., tasks_cancelled: _Optional[int] = ..., tasks_expired: _Optional[int] = ..., avg_submit_to_assignment_ms: _Optional[float] = ..., p99_submit_to_assignment_ms: _Optional[float] = ..., load_balancer_stats: _Optional[_Union[LoadBalancerStats, _Mapping]] = ..., queues: _Optional[_Iterable[_Union[QueueStats, _Mapping]]] = ...) -> None: ...

class LoadBalancerStats(_message.Message):
    __slots__ = ("strategy", "active_agents", "total_assignments", "avg_agent_load", "assignments_per_agent")
    class AssignmentsPerAgentEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_AGENTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    AVG_AGENT_LOAD_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_PER_AGENT_FIELD_NUMBER: _ClassVar[int]
    strategy: BalancingStrategy
    active_agents: int
    total_assignments: int
    avg_agent_load: float
    assignments_per_agent: _containers.ScalarMap[str, int]
    def __init__(self, strategy: _Optional[_Union[BalancingStrategy, str]] = ..., active_agents: _Optional[int] = ..., total_assignments: _Optional[int] = ..., avg_agent_load: _Optional[float] = ..., assignments_per_agent: _Optional[_Mapping[str, int]] = ...) -> None: ...

class QueueStats(_message.Message):
    __slots__ = ("priority", "pending", "oldest_task_age")
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    OLDEST_TASK_AGE_FIELD_NUMBER: _ClassVar[int]
    priority: TaskPriority
    pending: int
    oldest_task_age: _duration_pb2.Duration
    def __init__(self, priority: _Optional[_Union[TaskPriority, str]] = ..., pending: _Optional[int] = ..., oldest_task_age: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ListQueuesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListQueuesResponse(_message.Message):
    __slots__ = ("queues", "scheduled_retries", "dead_letter")
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_RETRIES_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_FIELD_NUMBER: _ClassVar[int]
    queues: _containers.RepeatedCompositeFieldContainer[QueueStats]
    scheduled_retries: int
    dead_letter: int
    def __init__(self, queues: _Optional[_Iterable[_Union[QueueStats, _Mapping]]] = ..., scheduled_retries: _Optional[int] = ..., dead_letter: _Optional[int] = ...) -> None: ...

class PurgeQueueRequest(_message.Message):
    __slots__ = ("priority", "reason")
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    priority: TaskPriority
    reason: str
    def __init__(self, priority: _Optional[_Union[TaskPriority, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class PurgeQueueResponse(_message.Message):
    __slots__ = ("cancelled_count",)
    CANCELLED_COUNT_FIELD_NUMBER: _ClassVar[int]
    cancelled_count: int
    def __init__(self, cancelled_count: _Optional[int] = ...) -> None: ...

class GetBalancingStrategyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetBalancingStrategyResponse(_message.Message):
    __slots__ = ("strategy",)
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    strategy: BalancingStrategy
    def __init__(self, strategy: _Optional[_Union[BalancingStrategy, str]] = ...) -> None: ...

class SetBalancingStrategyRequest(_message.Message):
    __slots__ = ("strategy",)
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    strategy: BalancingStrategy
    def __init__(self, strategy: _Optional[_Union[BalancingStrategy, str]] = ...) -> None: ...

class SetBalancingStrategyResponse(_message.Message):
    __slots__ = ("strategy", "previous_strategy")
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    strategy: BalancingStrategy
    previous_strategy: BalancingStrategy
    def __init__(self, strategy: _Optional[_Union[BalancingStrategy, str]] = ..., previous_strategy: _Optional[_Union[BalancingStrategy, str]] = ...) -> None: ...
