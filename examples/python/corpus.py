#!/usr/bin/python3
"""corpus.py -- write N text files of pseudo-random English-like words
(Zipf-distributed over a fixed vocabulary), the same files for the same
arguments, for wordcount.py's tests and benchmarks.

    /usr/bin/python3 examples/python/corpus.py DIR [--files N] [--kib K]
        [--seed S]

Prints the files' paths, one a line.
"""

import argparse
import os
import random


def vocabulary(rng, size=20000):
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [26 - i for i in range(26)]
    words = set()
    while len(words) < size:
        n = rng.randint(2, 10)
        words.add("".join(rng.choices(letters, weights, k=n)))
    return sorted(words)


def make(directory, files=100, kib=64, seed=1):
    """Write the files; return their paths."""
    rng = random.Random(seed)
    vocab = vocabulary(rng)
    # Zipf-like weights: word i is about 1/(i+1) as frequent as the first.
    weights = [1.0 / (i + 1) for i in range(len(vocab))]
    os.makedirs(directory, exist_ok=True)
    paths = []
    for i in range(files):
        words = rng.choices(vocab, weights, k=kib * 1024 // 6)
        lines = [" ".join(words[j:j + 12]) for j in range(0, len(words), 12)]
        path = os.path.join(directory, "text%04d.txt" % i)
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        paths.append(path)
    return paths


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("directory")
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--kib", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    for p in make(args.directory, args.files, args.kib, args.seed):
        print(p)


if __name__ == "__main__":
    main()
