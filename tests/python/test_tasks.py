"""
ame.tasks (bindings/ame/tasks.py): the thread-less API.  Tasks run in
worker processes, each one transaction over ame.shared objects: a total
over tasks is exact; tasks add tasks (only if they commit); the first
exception stops the run and names its task; a task that kills its worker
is reported and its effects are absent, the worker replaced, the rest done;
a worker killed from outside mid-task likewise; output happens once, at
commit; defer() from a running reactor; and examples/python/wordcount.py
prints exactly what a sequential run prints.

Task functions live in shared_apps/task_fns.py (ame.tasks runs functions
by name).  Run with Debian's python and the extension built::

    PYTHONPATH=build/bindings:bindings \\
        /usr/bin/python3 -m twisted.trial tests/python/test_tasks.py
"""

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

from twisted.trial.unittest import SynchronousTestCase

HERE = os.path.dirname(os.path.abspath(__file__))


def run_script(code, **env):
    """
    Run code (Python source) in a new interpreter, with env added to the
    environment; return its CompletedProcess (output as text).
    """
    return subprocess.run([sys.executable, "-c", code],
                          env=dict(os.environ, **env), capture_output=True,
                          text=True, timeout=60)


# Lines of a test's script (which imports os, time, signal and ame.shared)
# that take every slot of the heap but the script's own, in forked
# children (the list kids) that hold them until killed; an alarm ends a
# script that never does.  %-formatted with the script (no format fields).
_TAKE_SLOTS = (
    "signal.alarm(20)  # ends a run that never does\n"
    "c = ame.shared.counter('slots.%%d' %% os.getpid())\n"
    "c.add(0)\n"
    "kids = []\n"
    "for i in range(ame.shared.stats()['heap']['slots_max'] - 1):\n"
    "    pid = os.fork()\n"
    "    if pid == 0:\n"
    "        c.add(1)  # takes a slot\n"
    "        time.sleep(25)\n"
    "        os._exit(0)\n"
    "    kids.append(pid)\n"
    "while c.value < len(kids):\n"
    "    time.sleep(0.01)\n"
)
sys.path.insert(0, os.path.join(HERE, "shared_apps"))
EXAMPLES = os.path.join(HERE, "..", "..", "examples", "python")

import ame  # noqa: E402
import ame.shared as shared  # noqa: E402
import ame.tasks as tasks  # noqa: E402
import task_fns  # noqa: E402


def fresh(what="t"):
    return "%s-%s" % (what, uuid.uuid4().hex[:12])


class RunTests(SynchronousTestCase):
    def test_totalExact(self):
        """200 tasks on 2 workers: each committed once."""
        p = fresh()
        for i in range(200):
            tasks.add(task_fns.add_value, p, i)
        tasks.run(workers=2)
        self.assertEqual(shared.counter(p + ".total").value, sum(range(200)))
        self.assertEqual(sorted(shared.dict(p + ".ran").keys()),
                         list(range(200)))
        st = tasks.stats()
        self.assertEqual(st["tasks"], 200)
        self.assertEqual(st["workers"], 2)
        self.assertEqual(sum(w["tasks"] for w in st["per_worker"].values()),
                         200)

    def test_workersLeaveTheirSlots(self):
        """
        Workers that end normally hold no slot of the heap once run()
        returns: three runs on 2 workers leave no more participants than
        before.  (Only workers that died were recovered; the others'
        slots stayed taken, and a small heap ran out after a few dozen
        runs.)
        """
        p = fresh()
        shared.counter(p + ".total").add(0)  # this thread is in the heap
        before = shared.stats()["heap"]["slots_live"]
        for r in range(3):
            for i in range(4):
                tasks.add(task_fns.add_value, p, 4 * r + i)
            tasks.run(workers=2)
        self.assertLessEqual(shared.stats()["heap"]["slots_live"], before)
        self.assertEqual(shared.counter(p + ".total").value, sum(range(12)))

    def test_runsKeepNoHeap(self):
        """
        Runs that do the same work leave the heap's use where it was: the
        shared objects of a run are the process's, used again.  (Each run
        named a new set, which nothing destroyed: 13,136 bytes more after
        each.  The bound allows for the workers' statistics, whose size
        varies with their conflicts.)  A run that stops early leaves
        nothing for the next.
        """
        p = fresh()

        def one():
            for i in range(10):
                tasks.add(task_fns.add_value, p, i)
            tasks.run(workers=2)
            return shared.stats()["heap"]["used"]

        one()
        used = [one() for _ in range(4)]
        self.assertLess(max(used) - min(used), 4096, used)
        tasks.add(task_fns.fail, 0)
        for i in range(20):
            tasks.add(task_fns.add_value, p, i)
        self.assertRaises(tasks.TaskError, tasks.run, workers=1)
        tasks.add(task_fns.add_value, p, 100)
        tasks.run(workers=2)
        self.assertEqual(tasks.stats()["tasks"], 1)

    def test_chunksShrink(self):
        """
        The queue gets the tasks in order, in chunks that shrink as it
        drains, down to single tasks at the end (so the workers finish
        together).
        """
        session = tasks._Session(fresh())
        session.pending = [(0, "m:f", (i,), {}) for i in range(200)]
        session.flush(2)
        chunks = []
        while True:
            try:
                chunks.append(session.queue.get_nowait())
            except Exception:
                break
        sizes = [len(c) for c in chunks]
        self.assertEqual([r[2][0] for c in chunks for r in c],
                         list(range(200)))
        self.assertEqual(sizes, sorted(sizes, reverse=True))
        self.assertEqual(sizes[0], 50)
        self.assertEqual(sizes[-4:], [1, 1, 1, 1])

    def test_runAfterALongQueue(self):
        """
        run() starts whatever a run that stopped early left in the queue
        (tasks that add tasks leave one item each): 70,000 items are
        dropped, and the new task runs.  (They were dropped in one
        transaction, more than a write log holds: every later run() of
        the process raised MemoryError.)
        """
        session = tasks._current_session()
        for i in range(70000):
            session.queue.put([])
        p = fresh()
        tasks.add(task_fns.add_value, p, 5)
        tasks.run(workers=1)
        self.assertEqual(shared.counter(p + ".total").value, 5)
        self.assertEqual(len(session.queue), 0)

    def test_heapFullKeepsTasks(self):
        """
        A run() whose tasks do not fit the heap raises MemoryError and
        keeps them: the next run() raises it again rather than return as
        if they had run.  (They were taken from the pending list before
        they were queued: the next run() dropped those queued, ran
        nothing, and returned normally.)
        """
        p = fresh()
        code = (
            "import sys; sys.path.insert(0, %r)\n"
            "import ame.shared, ame.tasks, task_fns\n"
            "for i in range(400):\n"
            "    ame.tasks.add(task_fns.add_padded, %r, i, 'x' * 20000)\n"
            "for attempt in range(2):\n"
            "    try:\n"
            "        ame.tasks.run(workers=1)\n"
            "        print('returned')\n"
            "    except MemoryError:\n"
            "        print('MemoryError')\n"
        ) % (os.path.join(HERE, "shared_apps"), p)
        out = run_script(code, AME_SHARED_SIZE="4M")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.split(), ["MemoryError", "MemoryError"])

    def test_heapFullAtClaim(self):
        """
        A worker that cannot claim tasks (the heap is too full to copy a
        chunk to its batch) ends the run with an error, not replaced
        for ever.  (Each replacement met the same MemoryError: some 100
        forks a second, each with its traceback, until killed.)
        """
        p = fresh()
        code = (
            "import sys, signal; sys.path.insert(0, %r)\n"
            "import ame.shared, ame.tasks, task_fns\n"
            "signal.alarm(20)  # ends a run that never does\n"
            "for i in range(80):\n"
            "    ame.tasks.add(task_fns.add_padded, %r, i, 'x' * 30000)\n"
            "try:\n"
            "    ame.tasks.run(workers=1)\n"
            "    print('returned')\n"
            "except RuntimeError as e:\n"
            "    print('RuntimeError', 'could not' in str(e))\n"
        ) % (os.path.join(HERE, "shared_apps"), p)
        out = run_script(code, AME_SHARED_SIZE="4M")
        self.assertEqual(out.returncode, 0, out.stderr[-2000:])
        self.assertEqual(out.stdout.split(), ["RuntimeError", "True"])
        self.assertIn("MemoryError", out.stderr)
        self.assertLessEqual(out.stderr.count("Traceback"), 1)

    def test_tasksAddTasks(self):
        """A task's add() queues only when it commits; they all run."""
        p = fresh()
        tasks.add(task_fns.spawn, p, 6)
        tasks.run(workers=2)
        self.assertEqual(shared.counter(p + ".n").value, 2 ** 7 - 1)

    def test_exceptionStopsRun(self):
        """The first exception is raised by run(), naming the task; what
        the failed task added never runs, nor is its write kept."""
        p = fresh()
        tasks.add(task_fns.spawn_then_raise, p)
        with self.assertRaises(tasks.TaskError) as cm:
            tasks.run(workers=2)
        e = cm.exception
        self.assertIn("spawn_then_raise", e.task)
        self.assertIn(p, e.task)
        self.assertEqual(e.type, "KeyError")
        self.assertIn("boom in", e.message)
        self.assertIn("Traceback", e.tb)
        self.assertEqual(shared.counter(p + ".total").value, 0)
        self.assertEqual(len(shared.dict(p + ".ran")), 0)

    def test_sysExitIsAnException(self):
        """
        sys.exit() in a task is an exception it raised (SystemExit), as
        with any other: run() raises TaskError naming the task, and its
        write is rolled back.  (It left the worker's loop and ended the
        worker: run() reported "killed its worker (exit status 1)",
        which it had not, and went on.)
        """
        p = fresh()
        for i in range(4):
            tasks.add(task_fns.maybe_sys_exit, p, i, 2)
        with self.assertRaises(tasks.TaskError) as cm:
            tasks.run(workers=1)
        e = cm.exception
        self.assertIn("maybe_sys_exit", e.task)
        self.assertEqual(e.type, "SystemExit")
        self.assertEqual(e.message, "5")
        self.assertEqual(shared.counter(p + ".total").value, 0 + 1)

    def test_unprintableException(self):
        """
        An exception whose str() raises is still the task's error:
        TaskError, its type named, a stand-in message.  (The worker died
        recording it: "killed its worker (exit status 1)".)
        """
        tasks.add(task_fns.raise_unprintable)
        with self.assertRaises(tasks.TaskError) as cm:
            tasks.run(workers=1)
        self.assertEqual(cm.exception.type, "Unprintable")
        self.assertIn("str() failed", cm.exception.message)

    def test_taskKillsWorker(self):
        """A task that exits its worker is reported as failed, its effects
        are absent, the worker is replaced, and every other task runs."""
        p = fresh()
        for i in range(40):
            tasks.add(task_fns.maybe_die, p, i, 17)
        with self.assertRaises(tasks.TaskFailed) as cm:
            tasks.run(workers=2)
        self.assertEqual(len(cm.exception.failures), 1)
        what, how = cm.exception.failures[0]
        self.assertIn("maybe_die", what)
        self.assertIn("17", what)
        self.assertEqual(how, "exit status 9")
        self.assertEqual(shared.counter(p + ".total").value,
                         sum(range(40)) - 17)
        self.assertEqual(sorted(shared.dict(p + ".ran").keys()),
                         [i for i in range(40) if i != 17])

    def test_taskExitsWithWorkersCode(self):
        """
        A task that exits its worker with the status of a worker that
        ended normally (0, or 3: after a task raised) is reported as
        failed all the same, and the rest of its worker's batch runs.
        (run() took the status for a clean end: on one worker it returned
        with the rest of the batch never run and nothing reported; on two
        the other waited for that batch for ever.)
        """
        for status in (0, 3):
            p = fresh()
            for i in range(10):
                tasks.add(task_fns.maybe_exit, p, i, 3, status)
            with self.assertRaises(tasks.TaskFailed) as cm:
                tasks.run(workers=1)
            (what, how), = cm.exception.failures
            self.assertIn("maybe_exit", what)
            self.assertEqual(how, "exit status %d" % status)
            self.assertEqual(shared.counter(p + ".total").value,
                             sum(range(10)) - 3)
            self.assertEqual(sorted(shared.dict(p + ".ran").keys()),
                             [i for i in range(10) if i != 3])

    def test_runReapsOnlyItsWorkers(self):
        """
        run() leaves the program's other children alone: a subprocess
        that ended during the run is still there for its own wait(), with
        its status.  (run() waited for any child, and reaped it.)
        """
        child = subprocess.Popen([sys.executable, "-c",
                                  "import sys; sys.exit(7)"])
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:   # a zombie: ended
                with open("/proc/%d/stat" % child.pid) as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break
                time.sleep(0.01)
            p = fresh()
            for i in range(4):
                tasks.add(task_fns.add_value, p, i)
            tasks.run(workers=1)
        finally:
            status = child.wait(timeout=30)
        self.assertEqual(status, 7)
        self.assertEqual(shared.counter(p + ".total").value, 6)

    def test_statsCountDeadWorkersTasks(self):
        """
        stats() counts the tasks that a worker which then died committed:
        40 tasks on one worker, the 31st kills it, 39 committed.  (A
        worker reported its figures as it ended, and the replacement's
        took its place: "tasks" said 9, "reruns" -30.)
        """
        p = fresh()
        for i in range(40):
            tasks.add(task_fns.maybe_die, p, i, 30)
        with self.assertRaises(tasks.TaskFailed):
            tasks.run(workers=1)
        st = tasks.stats()
        self.assertEqual((st["tasks"], st["per_worker"][0]["tasks"]),
                         (39, 39))
        self.assertGreaterEqual(st["reruns"], 0)
        self.assertEqual(st["attempts"], st["tasks"] + st["reruns"])

    def test_statsKeepDeadWorkersRerunsAndBusy(self):
        """
        stats() keeps the re-runs and the busy time of a worker that then
        died: one worker, tasks 0 to 5 of 0.06 s each (task 0 twice: its
        first attempt is rolled back), task 6 kills it.  All of its 0.42 s
        but the last 0.1 s at most was recorded as it went.  (A worker
        reported both only as it ended, and the replacement's took their
        place: 0 re-runs, 0.0 s.)
        """
        p = fresh()
        for i in range(7):
            tasks.add(task_fns.busy_rerun_die, p, i, 6)
        with self.assertRaises(tasks.TaskFailed):
            tasks.run(workers=1)
        st = tasks.stats()
        self.assertEqual((st["tasks"], st["reruns"], st["attempts"]),
                         (6, 1, 7))
        self.assertGreaterEqual(st["per_worker"][0]["busy_s"], 0.3)

    def test_parentDiesBeforeWorkerArms(self):
        """
        A worker whose parent dies after the fork but before the worker
        asks to die with it (the kernel then never signals it) dies at
        once instead of running tasks for nobody.
        """
        d = self.mktemp()
        os.mkdir(d)
        code = (
            "import sys, os, time; sys.path.insert(0, %r)\n"
            "import ame.tasks, task_fns\n"
            "d = %r\n"
            "def hook():\n"
            "    with open(os.path.join(d, 'pid.tmp'), 'w') as f:\n"
            "        f.write(str(os.getpid()))\n"
            "    os.rename(os.path.join(d, 'pid.tmp'),\n"
            "              os.path.join(d, 'pid'))\n"
            "    time.sleep(1)  # the parent is killed meanwhile\n"
            "ame.tasks._before_die_with_parent = hook\n"
            "ame.tasks.add(task_fns.touch, os.path.join(d, 'ran'))\n"
            "ame.tasks.run(workers=1)\n"
        ) % (os.path.join(HERE, "shared_apps"), d)
        parent = subprocess.Popen([sys.executable, "-c", code])
        self.addCleanup(parent.wait)
        self.addCleanup(parent.kill)
        pidfile = os.path.join(d, "pid")
        deadline = time.monotonic() + 30
        while not os.path.exists(pidfile) and time.monotonic() < deadline:
            time.sleep(0.01)
        with open(pidfile) as f:
            worker = int(f.read())
        parent.kill()
        parent.wait()

        def gone():  # dead, or a zombie nobody reaps
            try:
                with open("/proc/%d/stat" % worker) as f:
                    return f.read().rsplit(")", 1)[1].split()[0] in "ZX"
            except OSError:
                return True

        while not gone() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertTrue(gone(), "worker %d still running" % worker)
        self.assertFalse(os.path.exists(os.path.join(d, "ran")),
                         "the worker ran a task after its parent died")

    def test_workersCannotStart(self):
        """
        Workers that cannot start (every slot of the heap is taken by
        other processes) end the run with an error that says so, once
        none is left, instead of being replaced for ever.  (run() forked
        a new one as each died: some 200 a second, each printing its
        traceback, until killed.)
        """
        code = (
            "import sys, os, time, signal; sys.path.insert(0, %r)\n"
            "import ame.shared, ame.tasks, task_fns\n"
            + _TAKE_SLOTS +
            "ame.tasks.add(task_fns.empty)\n"
            "try:\n"
            "    ame.tasks.run(workers=2)\n"
            "    print('returned')\n"
            "except RuntimeError as e:\n"
            "    print('RuntimeError', 'could not start' in str(e))\n"
            "finally:\n"
            "    for k in kids:\n"
            "        os.kill(k, signal.SIGKILL)\n"
            "        os.waitpid(k, 0)\n"
        ) % os.path.join(HERE, "shared_apps")
        out = run_script(code)
        self.assertEqual(out.returncode, 0, out.stderr[-2000:])
        self.assertEqual(out.stdout.split(), ["RuntimeError", "True"])
        self.assertLessEqual(out.stderr.count("Traceback"), 2)

    def test_workerKilledMidTask(self):
        """SIGKILL from outside while a task runs: that task is reported,
        its effects are absent, the others all ran once."""
        d = self.mktemp()
        os.mkdir(d)
        p = os.path.join(d, fresh())
        for i in range(30):
            tasks.add(task_fns.slow_mark, p, i)
        result = {}

        def killer():
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    with open(p + ".pid") as f:
                        pid = int(f.read())
                    break
                except (OSError, ValueError):
                    time.sleep(0.01)
            else:
                return
            result["pid"] = pid
            os.kill(pid, signal.SIGKILL)

        t = threading.Thread(target=killer)
        t.start()
        with self.assertRaises(tasks.TaskFailed) as cm:
            tasks.run(workers=2)
        t.join()
        self.assertIn("pid", result)
        (what, how), = cm.exception.failures
        self.assertIn("slow_mark", what)
        self.assertIn("SIGKILL", how)
        self.assertEqual(shared.counter(p + ".total").value, sum(range(1, 30)))
        self.assertNotIn(0, shared.dict(p + ".ran"))

    def test_outputOnceAtCommit(self):
        """print() and logging in a task happen once, at commit, even for
        a task whose first attempt was rolled back."""
        p = fresh()
        code = (
            "import sys, logging; sys.path.insert(0, %r)\n"
            "logging.basicConfig(format='%%(message)s')\n"
            "import ame.tasks, task_fns\n"
            "for i in range(3): ame.tasks.add(task_fns.chatty, %r, i)\n"
            "ame.tasks.run(workers=2)\n"
            "print('reruns', ame.tasks.stats()['reruns'])\n"
        ) % (os.path.join(HERE, "shared_apps"), p)
        out = run_script(code)
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = out.stdout.splitlines()
        for i in range(3):
            self.assertEqual(lines.count("task %d printed" % i), 1, lines)
            self.assertEqual(out.stderr.splitlines().count(
                "task %d logged" % i), 1, out.stderr)
        self.assertIn("reruns 1", lines)

    def test_outputIsAStream(self):
        """
        A task's sys.stdout is a text stream as the real one is: its
        encoding, isatty(), and bytes written to its buffer, which reach
        the real stream in order with the text, at commit.  (The stand-in
        had only write and flush: each of those was an AttributeError,
        the task's error.)
        """
        code = (
            "import sys; sys.path.insert(0, %r)\n"
            "import ame.tasks, task_fns\n"
            "ame.tasks.add(task_fns.uses_stream, 'a')\n"
            "ame.tasks.run(workers=1)\n"
        ) % os.path.join(HERE, "shared_apps")
        out = run_script(code, PYTHONIOENCODING="utf-8")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.splitlines(), [
            "a text", "a bytes", "a encoding utf-8 tty False"])
        # What print() wrote in pieces reaches the stream in one write
        # (unbuffered, as with PYTHONUNBUFFERED, each write is a system
        # call, and the workers share the file).
        writes = []

        class Stream:
            encoding = "utf-8"

            def write(self, text):
                writes.append(text)

            def flush(self):
                pass

        tasks._write_parts(Stream(), ["task 0", " printed", "\n"])
        self.assertEqual(writes, ["task 0 printed\n"])

    def test_addInAtomicAtCommit(self):
        """
        add() inside an ame.atomic block (not a task) queues once, when
        the block commits: not once per attempt, not for a block that
        raised; and a block whose first attempt rolled back leaves
        ame.tasks usable.  (add() queued in every attempt, at once; and
        its first call in a process opened the process's shared objects
        in that attempt, which its rollback freed: every later run()
        raised RuntimeError.)
        """
        p = fresh()
        code = (
            "import sys; sys.path.insert(0, %r)\n"
            "import ame, ame.shared, ame.tasks, task_fns\n"
            "from ame import _ame\n"
            "tries = []\n"
            "def block():\n"
            "    ame.tasks.add(task_fns.add_value, %r, 1)\n"
            "    tries.append(1)\n"
            "    if len(tries) == 1:\n"
            "        _ame._shared_abort()  # as a conflict would\n"
            "def fails():\n"
            "    ame.tasks.add(task_fns.add_value, %r, 2)\n"
            "    raise ZeroDivisionError\n"
            "ame.atomic(block)\n"
            "try:\n"
            "    ame.atomic(fails)\n"
            "except ZeroDivisionError:\n"
            "    pass\n"
            "ame.tasks.run(workers=1)\n"
            "print('attempts', len(tries), 'tasks', "
            "ame.tasks.stats()['tasks'], 'total', "
            "ame.shared.counter(%r + '.total').value)\n"
        ) % (os.path.join(HERE, "shared_apps"), p, p, p)
        out = run_script(code)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.split(),
                         ["attempts", "2", "tasks", "1", "total", "1"])

    def test_addRefusesBadTasks(self):
        """Functions not importable by name, and arguments ame.shared
        cannot store, are a TypeError with nothing queued."""
        with self.assertRaises(TypeError):
            tasks.add(lambda: None)
        with self.assertRaises(TypeError):
            tasks.add(task_fns.add_value, fresh(), object())

        def local():
            pass

        with self.assertRaises(TypeError):
            tasks.add(local)
        tasks.run(workers=1)  # nothing was queued: returns at once
        self.assertEqual(tasks.stats()["tasks"], 0)


class WordcountTests(SynchronousTestCase):
    def corpus(self):
        d = self.mktemp()
        os.mkdir(d)
        out = subprocess.run(
            [sys.executable, os.path.join(EXAMPLES, "corpus.py"), d,
             "--files", "24", "--kib", "16"],
            capture_output=True, text=True, check=True)
        return out.stdout.split()

    def wordcount(self, files, *flags):
        out = subprocess.run(
            [sys.executable, os.path.join(EXAMPLES, "wordcount.py")] +
            list(flags) + files, capture_output=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        return out.stdout

    def test_sameAsSequential(self):
        """Two workers print, byte for byte, what a sequential run does,
        with the tally and with a plain shared dict."""
        files = self.corpus()
        seq = self.wordcount(files, "--sequential")
        self.assertIn(b"files 24 words ", seq)
        self.assertEqual(self.wordcount(files, "--workers", "2"), seq)
        self.assertEqual(self.wordcount(files, "--workers", "2", "--dict"),
                         seq)


class DeferTests(SynchronousTestCase):
    def test_deferFromReactor(self):
        """defer() from a running reactor: results, a task's exception,
        a task that kills its worker, and work after that."""
        code = (
            "import sys; sys.path.insert(0, %r)\n"
            "import ame.reactor; ame.reactor.install()\n"
            "from twisted.internet import reactor, defer\n"
            "import ame.tasks, task_fns\n"
            "@defer.inlineCallbacks\n"
            "def main():\n"
            "    r = yield defer.gatherResults([ame.tasks.defer(task_fns.square, i)"
            " for i in range(30)])\n"
            "    print('squares', r == [i * i for i in range(30)])\n"
            "    try:\n"
            "        yield ame.tasks.defer(task_fns.fail, 3)\n"
            "    except ame.tasks.TaskError as e:\n"
            "        print('error', e.type, e.message)\n"
            "    try:\n"
            "        yield ame.tasks.defer(task_fns.die, 1)\n"
            "    except ame.tasks.TaskFailed as e:\n"
            "        print('failed', e.failures[0][1])\n"
            "    print('after', (yield ame.tasks.defer(task_fns.busy, 1000)))\n"
            "    reactor.stop()\n"
            "reactor.callWhenRunning(main)\n"
            "reactor.run()\n"
        ) % os.path.join(HERE, "shared_apps")
        out = run_script(code)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.splitlines(), [
            "squares True",
            "error ValueError no 3",
            "failed exit status 7",
            "after %d" % sum(i * i for i in range(1000)),
        ])

    def test_addInDeferredTask(self):
        """
        add() inside a defer() task is refused with a clear error, as
        the task's exception: the Deferred fails with TaskError, the
        pool goes on.  (The task was put into the pool's queue in the
        wrong form: a pool worker died on it, the reactor logged a
        TypeError from the pool's handling of that death, the worker was
        not replaced, and the added task never ran.)
        """
        p = fresh()
        code = (
            "import sys; sys.path.insert(0, %r)\n"
            "import ame.reactor; ame.reactor.install()\n"
            "from twisted.internet import reactor, defer\n"
            "import ame.shared, ame.tasks, task_fns\n"
            "@defer.inlineCallbacks\n"
            "def main():\n"
            "    try:\n"
            "        print('result', (yield ame.tasks.defer("
            "task_fns.adds_task, %r)))\n"
            "    except ame.tasks.TaskError as e:\n"
            "        print('error', e.type)\n"
            "    for i in range(4):\n"
            "        print('after', (yield ame.tasks.defer(task_fns.square, i)))\n"
            "    reactor.stop()\n"
            "reactor.callWhenRunning(main)\n"
            "reactor.run()\n"
            "print('total', ame.shared.counter(%r + '.total').value)\n"
        ) % (os.path.join(HERE, "shared_apps"), p, p)
        out = run_script(code)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.splitlines(), [
            "error RuntimeError",
            "after 0", "after 1", "after 4", "after 9",
            "total 0",
        ], out.stderr)
        self.assertNotIn("Traceback", out.stderr)

    def test_deferInAtomic(self):
        """
        defer() inside an ame.atomic block whose first attempt rolls back
        sends the task once, when the block commits: its Deferred fires,
        and so do later ones.  (Each attempt sent it at once, and the one
        rolled back left the pool waiting on a results Deferred that was
        never asked for: no defer() fired again.)
        """
        code = (
            "import sys; sys.path.insert(0, %r)\n"
            "import ame.reactor; ame.reactor.install()\n"
            "from twisted.internet import reactor, defer\n"
            "import ame, ame.tasks, task_fns\n"
            "from ame import _ame\n"
            "tries = []\n"
            "def block():\n"
            "    d = ame.tasks.defer(task_fns.square, 3)\n"
            "    tries.append(d)\n"
            "    if len(tries) == 1:\n"
            "        _ame._shared_abort()  # as a conflict would\n"
            "    return d\n"
            "@defer.inlineCallbacks\n"
            "def main():\n"
            "    print('first', (yield ame.tasks.defer(task_fns.square, 2)))\n"
            "    print('in atomic', (yield ame.atomic(block)))\n"
            "    print('after', (yield ame.tasks.defer(task_fns.square, 4)))\n"
            "    reactor.stop()\n"
            "def late():\n"
            "    print('timed out')\n"
            "    reactor.stop()\n"
            "reactor.callWhenRunning(main)\n"
            "reactor.callLater(20, late)\n"
            "reactor.run()\n"
        ) % os.path.join(HERE, "shared_apps")
        out = run_script(code)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.splitlines(),
                         ["first 4", "in atomic 9", "after 16"])

    def test_deferWorkersCannotStart(self):
        """
        A pool whose workers cannot start (every slot of the heap taken)
        fails the waiting Deferreds with RuntimeError once none is left,
        and the next defer() starts a pool again.  (Each was replaced as
        it died, for ever, and the Deferreds never fired.)
        """
        code = (
            "import sys, os, time, signal; sys.path.insert(0, %r)\n"
            "import ame.reactor; ame.reactor.install()\n"
            "from twisted.internet import reactor, defer\n"
            "import ame.shared, ame.tasks, task_fns\n"
            + _TAKE_SLOTS +
            "@defer.inlineCallbacks\n"
            "def main():\n"
            "    try:\n"
            "        yield ame.tasks.defer(task_fns.square, 2)\n"
            "    except RuntimeError as e:\n"
            "        print('RuntimeError', 'could not start' in str(e))\n"
            "    for k in kids:\n"
            "        os.kill(k, signal.SIGKILL)\n"
            "        os.waitpid(k, 0)\n"
            "    print('again', (yield ame.tasks.defer(task_fns.square, 3)))\n"
            "    reactor.stop()\n"
            "reactor.callWhenRunning(main)\n"
            "reactor.run()\n"
        ) % os.path.join(HERE, "shared_apps")
        out = run_script(code)
        self.assertEqual(out.returncode, 0, out.stderr[-2000:])
        self.assertEqual(out.stdout.splitlines(),
                         ["RuntimeError True", "again 9"])
