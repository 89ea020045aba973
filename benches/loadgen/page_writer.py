#!/usr/bin/env python3
"""Writes a B-tree store's page pattern with no service around it.

    page_writer.py PATH PAGES [INTERVAL_S]

Every INTERVAL_S seconds (default 0.1, `flush.tick_ms`), writes PAGES random
4-KiB pages of a 128-MiB file at PATH and fdatasyncs it, as the embedded
store's commits do: used by noop_io.sh to read the no-op server's tail beside
a disk writer of the same I/O and nothing else. Runs until killed.
"""

import os
import random
import sys
import time

FILE_BYTES = 128 << 20
PAGE = 4096


def main():
    path, pages = sys.argv[1], int(sys.argv[2])
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 0.1
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    os.ftruncate(fd, FILE_BYTES)
    data = os.urandom(PAGE)
    slots = FILE_BYTES // PAGE
    due = time.monotonic()
    while True:
        for _ in range(pages):
            os.pwrite(fd, data, random.randrange(slots) * PAGE)
        os.fdatasync(fd)
        due += interval
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)


if __name__ == "__main__":
    main()
