"""Wall time of ``securechat send``, alone and handed to a running ``securechat daemon``.

    python -m securechat.bench.send_wall [--runs 20]

It starts its own relay (as ``securechat-bench`` does), registers two users, then times
``--runs`` sends of a one-line message as a person's shell would run them (a new
``securechat`` process each time, from its start to its exit): first with no daemon
(each a full unlock, argon2id included, TLS connection and login), then with alice's
daemon running (no password in the environment).  It prints one JSON object, then a
table for people.
"""

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer, task, threads

from securechat.bench.server import ManagedServer
from securechat.client.rpc import DaemonConnection

PASSWORD = "bench password, not a secret"
DAEMON_START_TIMEOUT = 60


def securechat(config, *args, password=True, check=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURECHAT_")}
    if password:
        env["SECURECHAT_PASSWORD"] = PASSWORD
    command = [os.path.join(os.path.dirname(sys.executable), "securechat"), "--config", config,
               *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, check=check,
                          stdin=subprocess.DEVNULL)


def write_config(directory, user, port, ca_file):
    path = os.path.join(directory, f"{user}.ini")
    with open(path, "w") as f:
        f.write(f"[client]\nserver = 127.0.0.1:{port}\nusername = {user}\n"
                f"data_dir = {os.path.join(directory, user)}\nca_file = {ca_file}\n")
    return path


def timed_sends(config, runs, password):
    times = []
    for i in range(runs):
        started = time.perf_counter()
        securechat(config, "send", "bob", f"bench message {i}", password=password)
        times.append((time.perf_counter() - started) * 1000)
    return times


def figures(times):
    ordered = sorted(times)
    return {"median_ms": round(statistics.median(ordered), 1),
            "p90_ms": round(ordered[max(0, int(len(ordered) * 0.9 + 0.5) - 1)], 1),
            "min_ms": round(ordered[0], 1), "max_ms": round(ordered[-1], 1)}


def wait_for_daemon(data_dir, process):
    deadline = time.monotonic() + DAEMON_START_TIMEOUT
    while True:
        connection = DaemonConnection.find(data_dir)
        if connection is not None:
            connection.close()
            return
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the daemon did not start: {process.stderr.read()}")
        time.sleep(0.05)


def measure(server, runs):
    """The blocking part (run in a thread): register, time without, then with a daemon."""
    clients = tempfile.mkdtemp(prefix="securechat-bench-clients-")
    try:
        alice = write_config(clients, "alice", server.port, server.cert_path)
        bob = write_config(clients, "bob", server.port, server.cert_path)
        securechat(alice, "register")
        securechat(bob, "register")
        securechat(alice, "send", "bob", "warm-up")
        alone = timed_sends(alice, runs, password=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SECURECHAT_")}
        daemon = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "securechat"), "--config", alice,
             "daemon"], env={**env, "SECURECHAT_PASSWORD": PASSWORD},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        try:
            wait_for_daemon(os.path.join(clients, "alice"), daemon)
            securechat(alice, "send", "bob", "warm-up", password=False)
            served = timed_sends(alice, runs, password=False)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
        return {"runs": runs, "without_daemon": figures(alone), "with_daemon": figures(served)}
    finally:
        shutil.rmtree(clients, ignore_errors=True)


async def run(args):
    server = ManagedServer()
    await server.start()
    try:
        result = await threads.deferToThread(measure, server, args.runs)
    finally:
        server.stop()
    report = {"benchmark": "send wall time",
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                         f"{platform.python_version()}", **result}
    print(json.dumps(report))
    for case in ("without_daemon", "with_daemon"):
        print(f"{case:15}  " + "  ".join(f"{k} {v}" for k, v in report[case].items()),
              file=sys.stderr)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m securechat.bench.send_wall",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="sends timed in each case")
    args = parser.parse_args(argv)
    task.react(lambda reactor: defer.ensureDeferred(run(args)))


if __name__ == "__main__":
    main()
