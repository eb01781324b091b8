"""The job lifecycle: what a job is (schema.py), its store and state machine (store.py, lua/)."""

from shared.jobs.schema import (
    Job,
    JobStatus,
    Stage,
    decode_cursor,
    encode,
    encode_cursor,
    iso,
    new_job_id,
)
from shared.jobs.store import JobStore, died_message

__all__ = [
    "Job",
    "JobStatus",
    "JobStore",
    "Stage",
    "decode_cursor",
    "died_message",
    "encode",
    "encode_cursor",
    "iso",
    "new_job_id",
]
