"""Stopping (rest/cli/signals.py): a stop is a stop whichever handler Prefect had installed when it landed."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
from prefect.exceptions import TerminationSignal

from rest.cli.signals import signal_in


def _raised_while_handling(first: BaseException, second: BaseException) -> BaseException:
    try:
        try:
            raise first
        except BaseException:
            raise second  # noqa: B904 -- the implicit context is what Prefect's engine leaves
    except BaseException as exc:
        return exc


def test_signal_in_finds_the_termination_behind_a_failed_crash_report():
    exc = _raised_while_handling(TerminationSignal(signal.SIGTERM), ConnectionRefusedError("the server is gone"))
    assert signal_in(exc) == signal.SIGTERM
    wrapped = RuntimeError("flow failed")
    wrapped.__cause__ = exc
    assert signal_in(wrapped) == signal.SIGTERM


def test_signal_in_is_none_for_a_plain_failure_even_with_a_cycle():
    exc = _raised_while_handling(ValueError("bad row"), KeyError("x"))
    exc.__context__.__context__ = exc  # a cycle must not loop
    assert signal_in(exc) is None


@pytest.mark.integration  # a subprocess that imports Prefect
def test_sigterm_under_prefects_handler_with_a_failing_crash_report_exits_143_with_one_line():
    # The race of `kill -TERM -<pgid>`: Prefect's bridge turns SIGTERM into TerminationSignal, and reporting the
    # crash fails because the server got the signal too. The command must still stop as a stop.
    script = textwrap.dedent(
        """
        import os, signal
        from prefect.utilities.engine import capture_sigterm
        from rest.cli.signals import Stopping
        stopping = Stopping()
        stopping.install()
        try:
            with capture_sigterm():
                try:
                    os.kill(os.getpid(), signal.SIGTERM)
                    signal.pause()
                except BaseException:
                    raise ConnectionRefusedError("the server is gone")  # the crash report fails
        except BaseException as exc:
            stopping.exit_if_stopped(exc)
            raise
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert proc.stderr.count("[rest] stopped by SIGTERM") == 1 and "Traceback" not in proc.stderr, proc.stderr
