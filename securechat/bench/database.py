"""Finding the PostgreSQL server a run stores in, when it runs on this machine, so that
the run reports the database's CPU time beside the relay's.

The relay's ``/proc`` figures leave out the database's processes, which do a
large part of the work on that store (about a quarter of a core in W3 at
1,000 msg/s).  The tool finds the server from a connection of its own: the
backend serving it is a child of the postmaster, and the postmaster and its
children are the server.  A database elsewhere (no such backend here) has no
figures.
"""

import psycopg2

from securechat.bench.procfs import command_name, parent

POSTGRES_COMMANDS = ("postgres", "postmaster")


def local_postmaster(url):
    """The pid of the postmaster of the PostgreSQL server at ``url`` when it runs on this
    machine, else None.  Blocking: call it in a thread."""
    connection = psycopg2.connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            (backend,) = cursor.fetchone()
        # Read while connected: the backend ends with the connection.
        postmaster = parent(backend)
        found = (command_name(backend) in POSTGRES_COMMANDS
                 and command_name(postmaster) in POSTGRES_COMMANDS)
    finally:
        connection.close()
    return postmaster if found else None
