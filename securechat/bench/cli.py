"""``securechat-bench``: run one workload against a relay and print its figures.

It starts its own ``twistd -n securechat`` (SQLite, or PostgreSQL with
``--database``; ``--nodes N`` of them on that database, the clients spread over
them) unless ``--attach`` names a running relay, runs the workload
for a bounded time, and prints one JSON object, then a table for people.
"""

import argparse
import json
import os
import platform
import sys

from twisted.internet import defer, task

from securechat.bench import files, storm, workloads
from securechat.bench.server import AttachedServer, ManagedServer, run_prefix

DEFAULTS = {
    "w1": dict(pairs=10, inflight=200, size=200, warmup=2.0, duration=10.0),
    "w2": dict(pairs=50, rate=20.0, size=200, warmup=2.0, duration=10.0),
    "w3": dict(members=50, rates=(100.0, 1000.0), size=200, warmup=1.0, duration=10.0),
    "w4": dict(connections=10000, idle=25.0),
    "w5": dict(envelopes=10000, size=200, inflight=200),
    "w6": dict(connections=10000, concurrency=1000, processes=2),
    "w7": dict(clients=10, size=8),
}
NAMES = {"w1": "throughput", "w2": "latency", "w3": "room fan-out", "w4": "idle connections",
         "w5": "offline drain", "w6": "reconnect storm", "w7": "files"}
RUNS = {**workloads.WORKLOADS, "w6": storm.w6_reconnect_storm, "w7": files.w7_files}
CONNECTING = ("w4", "w6")
ON_NODES = ("w1", "w2", "w3")
"""The workloads that spread their clients over several relay processes (``--nodes``)."""
"""The workloads that hold a connection (a file descriptor) per device."""


def build_parser():
    parser = argparse.ArgumentParser(prog="securechat-bench", description=__doc__.split("\n")[0])
    parser.add_argument("workload", choices=sorted(DEFAULTS),
                        help="w1 throughput, w2 latency, w3 room fan-out, w4 idle connections, "
                             "w5 offline drain, w6 reconnect storm, w7 files")
    parser.add_argument("--database", help="postgresql:// URL for the started relay "
                                           "(default: its embedded SQLite)")
    parser.add_argument("--attach", metavar="HOST:PORT", help="use a running relay instead")
    parser.add_argument("--nodes", type=int, default=1,
                        help="w1, w2, w3: start this many relay processes on the one "
                             "PostgreSQL database of --database and spread the clients over "
                             "them (w2: every other pair's receiver on another node)")
    parser.add_argument("--ca-file", help="certificate to verify an attached relay with")
    parser.add_argument("--server-pid", type=int, help="pid of an attached relay (for /proc)")
    parser.add_argument("--fsync-dir", metavar="DIR",
                        help="a directory on the disk the store commits to, to time fdatasync "
                             "in while measuring (default: the started relay's directory; "
                             "not timed for an attached relay without it)")
    parser.add_argument("--pairs", type=int, help="w1, w2: sender/receiver pairs")
    parser.add_argument("--inflight", type=int, help="w1, w5: outstanding sends per pair")
    parser.add_argument("--size", type=int, help="payload bytes (w7: MiB a file)")
    parser.add_argument("--clients", type=int, help="w7: clients moving files at once")
    parser.add_argument("--rate", type=float, action="append",
                        help="w2: messages/s per pair; w3: messages/s (repeatable)")
    parser.add_argument("--members", type=int, help="w3: room member devices")
    parser.add_argument("--connections", type=int,
                        help="w4: connections to open; w6: devices logging in")
    parser.add_argument("--concurrency", type=int,
                        help="w6: logins (TLS handshakes included) under way at once")
    parser.add_argument("--processes", type=int,
                        help="w6: processes the devices are spread over (default 2)")
    parser.add_argument("--idle", type=float,
                        help="w4: seconds the connections stay idle before memory is sampled")
    parser.add_argument("--envelopes", type=int, help="w5: envelopes to queue")
    parser.add_argument("--warmup", type=float, help="seconds before measuring")
    parser.add_argument("--duration", type=float, help="seconds measured")
    return parser


def workload_options(args):
    options = dict(DEFAULTS[args.workload])
    for key in ("pairs", "inflight", "size", "members", "connections", "idle", "envelopes",
                "warmup", "duration", "concurrency", "processes", "clients"):
        value = getattr(args, key)
        if value is not None and key in options:
            options[key] = value
    if args.rate:
        if "rates" in options:
            options["rates"] = tuple(args.rate)
        elif "rate" in options:
            options["rate"] = args.rate[0]
    return options


def table(report):
    width = max(len(k) for k in report)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in report.items())


def check_nodes(args):
    """``--nodes`` > 1 needs relays the tool starts, on a database they can share."""
    if args.nodes < 1:
        raise SystemExit("securechat-bench: --nodes must be at least 1")
    if args.nodes == 1:
        return
    if args.workload not in ON_NODES:
        raise SystemExit(f"securechat-bench: --nodes applies to {', '.join(ON_NODES)}, "
                         f"not {args.workload}")
    if args.attach:
        raise SystemExit("securechat-bench: --nodes starts its own relays; it cannot --attach")
    if not args.database:
        raise SystemExit("securechat-bench: --nodes needs --database postgresql://...: the "
                         "nodes share one PostgreSQL database (SQLite serves one process)")


async def run(args):
    if args.workload in CONNECTING:
        workloads.raise_fd_limit(
            (args.connections or DEFAULTS[args.workload]["connections"]) + 256)
    if args.workload == "w6" and args.attach:
        raise SystemExit("securechat-bench: w6 writes accounts into the relay's store and "
                         "restarts it; it cannot --attach")
    check_nodes(args)
    if args.fsync_dir and not os.path.isdir(args.fsync_dir):
        raise SystemExit(f"securechat-bench: --fsync-dir {args.fsync_dir!r} is not a directory")
    if args.attach:
        host, _, port = args.attach.rpartition(":")
        if not args.ca_file:
            raise SystemExit("securechat-bench: --attach needs --ca-file")
        server = AttachedServer(host, int(port), args.ca_file, args.server_pid, args.fsync_dir)
    else:
        server = ManagedServer(database=args.database, disk_dir=args.fsync_dir,
                               nodes=args.nodes)
    await server.start()
    try:
        options = workload_options(args)
        figures = await RUNS[args.workload](server, run_prefix(), **options)
    finally:
        server.stop()
    report = {"workload": args.workload, "name": NAMES[args.workload],
              "store": "postgresql" if args.database else ("attached" if args.attach else "sqlite"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                         f"{platform.python_version()}",
              **figures}
    print(json.dumps(report))
    print(table(report), file=sys.stderr)
    return report


def main(argv=None):
    args = build_parser().parse_args(argv)
    task.react(lambda reactor: defer.ensureDeferred(run(args)))


if __name__ == "__main__":
    main()
