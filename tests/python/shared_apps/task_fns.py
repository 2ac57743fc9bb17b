"""
Task functions for tests/python/test_tasks.py: ame.tasks runs functions
by name, so they live at module level here.  Each names its shared
objects after its first argument (a test's fresh prefix).
"""
import os
import signal
import sys
import time

import ame
import ame.shared as shared
import ame.tasks


def add_value(prefix, i):
    """Add i to the prefix's total and record that task i ran."""
    shared.counter(prefix + ".total").add(i)
    shared.dict(prefix + ".ran")[i] = True


def add_padded(prefix, i, pad):
    """add_value, with an argument that takes room (pad)."""
    add_value(prefix, i)


def spawn(prefix, depth):
    """A task that adds two more tasks until depth reaches 0."""
    shared.counter(prefix + ".n").add(1)
    if depth > 0:
        ame.tasks.add(spawn, prefix, depth - 1)
        ame.tasks.add(spawn, prefix, depth - 1)


def spawn_then_raise(prefix):
    """Adds a task, then raises: the added task must never run."""
    ame.tasks.add(add_value, prefix, 1000)
    raise KeyError("boom in " + prefix)


def maybe_die(prefix, i, die_at):
    """Like add_value, but task die_at kills its worker first."""
    if i == die_at:
        shared.counter(prefix + ".total").add(i)  # never committed
        os._exit(9)
    add_value(prefix, i)


def maybe_exit(prefix, i, die_at, status):
    """Like maybe_die, but task die_at exits with the given status (0 and
    3 are the codes of a worker that ends normally)."""
    if i == die_at:
        shared.counter(prefix + ".total").add(i)  # never committed
        os._exit(status)
    add_value(prefix, i)


def maybe_sys_exit(prefix, i, at):
    """Like add_value, but task `at` calls sys.exit(5) (an exception)."""
    if i == at:
        shared.counter(prefix + ".total").add(i)  # rolled back
        sys.exit(5)
    add_value(prefix, i)


def adds_task(prefix):
    """A task that adds a task (add_value(prefix, 5)), and returns 5."""
    ame.tasks.add(add_value, prefix, 5)
    return 5


def slow_mark(prefix, i):
    """Record this worker's pid as running task i, wait to be killed
    (task 0), or just add."""
    if i == 0:
        # Tell the test which process to kill (a file: nothing written in
        # this transaction is seen until it commits, and it never does).
        with open(prefix + ".pid", "w") as f:
            f.write(str(os.getpid()))
        time.sleep(60)
    add_value(prefix, i)


def uses_stream(tag):
    """Write to sys.stdout as programs do: text, bytes through its
    buffer, and what it says of itself."""
    sys.stdout.write("%s text\n" % tag)
    sys.stdout.buffer.write(b"%s bytes\n" % tag.encode())
    print(tag, "encoding", sys.stdout.encoding, "tty", sys.stdout.isatty())


def chatty(prefix, i):
    """Print, log, and (the first attempt of task 0) conflict on purpose."""
    import logging
    print("task %d printed" % i)
    logging.getLogger("chatty").warning("task %d logged", i)
    sys.stdout.flush()
    if i == 0 and prefix not in _aborted:
        # The first attempt of task 0, in this process: end it as a
        # conflict would; the task runs again.
        _aborted.add(prefix)
        from ame import _ame
        _ame._shared_abort()


_aborted = set()  # prefixes whose task 0 had its forced abort here


def busy_rerun_die(prefix, i, die_at):
    """Task die_at kills its worker at once; the others take 0.06 s each,
    and the first attempt of task 0 (in this process) ends as a conflict
    would, after its 0.06 s: it runs again."""
    if i == die_at:
        os._exit(9)
    time.sleep(0.06)
    if i == 0 and prefix not in _aborted:
        _aborted.add(prefix)
        from ame import _ame
        _ame._shared_abort()
    add_value(prefix, i)


class Unprintable(Exception):
    """An exception whose str() raises."""

    def __str__(self):
        raise ValueError("no str")


def raise_unprintable():
    raise Unprintable()


def square(x):
    return x * x


def fail(x):
    raise ValueError("no %r" % (x,))


def die(x):
    os._exit(7)


def busy(n):
    """CPU work: sum of squares below n."""
    return sum(i * i for i in range(n))


def empty():
    pass


def touch(path):
    """Create the file at path (outside the STM: at once)."""
    with open(path, "w"):
        pass
