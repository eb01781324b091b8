"""Gunicorn settings of the web front end, the one place they live.

    gunicorn -c web/gunicorn_conf.py "web.app:create_app()"

used by scripts/up.sh and Dockerfile.web (command-line options still override). Environment:
BIND (default 127.0.0.1; the image sets 0.0.0.0) and PORT (default 8000) make the address;
WEB_CONCURRENCY the number of processes; WEB_BODY_TIMEOUT the seconds a request body may stall;
PROMETHEUS_MULTIPROC_DIR where the processes keep their metrics (default: a fresh temporary folder).

Why gevent: a process serves each connection in a greenlet, so clients that are slow or stalled
(an unfinished request head, an upload that stops halfway) and requests waiting on a hung Redis
or storage each hold a few kilobytes, not one of a handful of threads. With threads (gthread,
2 x 4) eight such clients stopped a deployment from answering anything, /healthz included.
CPU-bound image decoding runs in gevent's native thread pool (web/jobs/submit.py), so the event loop
keeps answering meanwhile. In production nginx (deploy/nginx.conf) sits in front and buffers
whole request bodies; the limits below also hold when gunicorn faces clients directly.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _address() -> str:
    host = os.environ.get("BIND", "").strip() or "127.0.0.1"
    if ":" in host and not host.startswith("["):  # an IPv6 address
        host = f"[{host}]"
    return f"{host}:{os.environ.get('PORT', '').strip() or '8000'}"


bind = [_address()]

worker_class = "gevent"
# Processes: each runs one event loop (and decodes one upload at a time), so a few per machine
# use its cores; connections per process are cheap. Keep the app unloaded in the master
# (preload_app stays off): the gevent worker must monkey-patch before the app is imported.
workers = int(os.environ.get("WEB_CONCURRENCY") or max(2, min(4, _cores())))
worker_connections = 1000
# The master restarts a process whose event loop has not ticked for this long (it never blocks
# on a client: slow clients only park greenlets).
timeout = 30
graceful_timeout = 30
# Seconds an idle keep-alive connection stays open, and (gevent worker) the time a client has to
# send a complete request head: unfinished heads are dropped after this.
keepalive = 5
# Seconds a request body may go without a byte arriving before the request ends with a 400
# (set on the connection in pre_request below; nginx enforces its own client_body_timeout).
body_timeout = float(os.environ.get("WEB_BODY_TIMEOUT") or 30)

# Request heads: a 4 KiB request line, 50 header fields of at most 8 KiB each.
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190

accesslog = "-"
errorlog = "-"
# No runtime control socket ($HOME/.gunicorn/gunicorn.ctl): nothing uses it, and several
# instances of one user would fight over the path.
control_socket_disable = True


def pre_request(worker, req):
    """Bound the wait for each piece of a request body (and of a response write).

    Without it a client that stops sending halfway through an upload would hold its connection
    for ever. The timeout surfaces as an error inside wsgi.input.read(), which the app answers
    with a 400 and no job (web/jobs/submit.py RequestBody)."""
    sock = getattr(getattr(req, "unreader", None), "sock", None)
    if sock is not None and hasattr(sock, "settimeout"):
        sock.settimeout(body_timeout)


# Metrics (web/middleware/metrics.py): each process writes its counts to files in PROMETHEUS_MULTIPROC_DIR and
# a scrape adds up every process's. Set here in the master, before any worker imports
# prometheus_client (the app is not preloaded), and never at import: loading this file must not
# switch the importing process to multiprocess mode.
METRICS_DIR_PREFIX = "narrator-metrics-"


def on_starting(server):
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:  # a given folder: the counts of an earlier run must not be added to this one's
        os.makedirs(directory, exist_ok=True)
        for stale in glob.glob(os.path.join(directory, "*.db")):
            os.remove(stale)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=METRICS_DIR_PREFIX)


def child_exit(server, worker):
    """A process that ended keeps its counters (they only add up) but drops its live gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    # Only the folder on_starting made (a reload re-reads this file, so no module state is kept).
    parent, name = os.path.split(os.environ.get("PROMETHEUS_MULTIPROC_DIR", ""))
    if parent == tempfile.gettempdir() and name.startswith(METRICS_DIR_PREFIX):
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
