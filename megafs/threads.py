"""Run a function in trio's worker threads, cheaply.

``trio.to_thread.run_sync`` renames the worker thread for every call, and back
afterwards: on Linux each rename writes ``/proc/self/task/TID/comm``, several
system calls per call, which adds up for the few-hundred-microsecond jobs on the
data path (hashing, sealing, opening a block). :func:`run_sync` uses the same
thread cache without renaming. Like ``to_thread.run_sync`` (without
``abandon_on_cancel``) it cannot be cancelled once started: the caller waits for
the job to finish. It takes no capacity limiter; callers bound their own
concurrency.
"""

from __future__ import annotations

import functools

import trio


async def run_sync(fn, *args):
    """Call ``fn(*args)`` in a worker thread and return its result (or raise its error)."""
    await trio.lowlevel.checkpoint_if_cancelled()
    token = trio.lowlevel.current_trio_token()
    task = trio.lowlevel.current_task()

    def deliver(result) -> None:  # in the worker thread: an outcome.Value or .Error
        token.run_sync_soon(trio.lowlevel.reschedule, task, result)

    trio.lowlevel.start_thread_soon(functools.partial(fn, *args), deliver)

    def abort(_raise_cancel):
        return trio.lowlevel.Abort.FAILED  # the job runs on; wait for it

    return await trio.lowlevel.wait_task_rescheduled(abort)  # unwraps the outcome
