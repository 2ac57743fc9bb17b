#!/usr/bin/python3
"""wordcount.py -- count the words of many files in parallel with ame.tasks:
one task per file, each a transaction that counts its file and adds the
counts to a shared tally (ame.shared.counts).  No threads, no locks.  With
--dict the counts go into an ame.shared.dict instead: the result is the
same, but tasks that add to the same words at the same time conflict, and
all but one of them run again (ame.tasks.stats() says how often).

    /usr/bin/python3 examples/python/wordcount.py [--workers N|auto]
        [--sequential] [--top N] FILE...

Prints "COUNT WORD" lines, most frequent first (ties by word), then
"files F words W distinct D".  --sequential runs the same tasks one after
the other in this process (no workers): the output is the same, byte for
byte.  In a build tree, ame needs PYTHONPATH=BUILDDIR/bindings:bindings.
"""

import argparse
import collections
import re
import sys

import ame
import ame.shared
import ame.tasks

WORD = re.compile(r"[a-z0-9']+")


def count(path, table, kind="counts"):
    """The task: count path's words and add them to the shared tally (or
    dict) `table`: one transaction, all of this file's counts or none."""
    with open(path, encoding="utf-8", errors="replace") as f:
        words = collections.Counter(WORD.findall(f.read().lower()))
    if kind == "dict":
        ame.shared.dict(table).add(words)
    else:
        ame.shared.counts(table).update(words)
    ame.shared.counter(table + ".files").add(1)


def report(table, top, kind="counts"):
    if kind == "dict":
        counts = ame.shared.dict(table).items()  # one consistent snapshot
    else:
        counts = ame.shared.counts(table).items()
    counts.sort(key=lambda kv: (-kv[1], kv[0]))
    out = sys.stdout
    for word, n in counts[:top] if top else counts:
        out.write("%d %s\n" % (n, word))
    out.write("files %d words %d distinct %d\n" % (
        ame.shared.counter(table + ".files").value,
        sum(n for _, n in counts), len(counts)))


def main():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", metavar="FILE")
    ap.add_argument("--workers", default="auto",
                    help="worker processes: N or auto (default)")
    ap.add_argument("--sequential", action="store_true",
                    help="run the tasks one by one in this process")
    ap.add_argument("--top", type=int, default=0,
                    help="print the N most frequent words only")
    ap.add_argument("--table", default="wordcount",
                    help="the shared tally's name (default wordcount)")
    ap.add_argument("--dict", action="store_true",
                    help="count into an ame.shared.dict, not a tally")
    ap.add_argument("--stats", action="store_true",
                    help="print ame.tasks.stats() to stderr at the end")
    args = ap.parse_args()
    kind = "dict" if args.dict else "counts"
    if args.sequential:
        for path in args.files:
            ame.atomic(count, path, args.table, kind)
    else:
        for path in args.files:
            ame.tasks.add(count, path, args.table, kind)
        ame.tasks.run(workers=args.workers if args.workers == "auto"
                      else int(args.workers))
        if args.stats:
            print(ame.tasks.stats(), file=sys.stderr)
    report(args.table, args.top, kind)


if __name__ == "__main__":
    main()
