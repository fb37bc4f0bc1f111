#!/usr/bin/env python3
"""What an fdatasync costs the log on this disk: appends that extend a file against appends into
zeros written ahead (what the embedded log's writer does: storage/src/embedded_log/segments.rs,
`zero_ahead`) and into space fallocate'd ahead. Each mode writes RECORD bytes then fdatasyncs,
COUNT times, in a fresh file in DIR, and prints the wall time and the CPU time an fsync
(BENCHMARKS.md, "2026-12-07 (sixth session)").

  scripts/bench-fsync.py [--dir DIR] [--record BYTES] [--count N] [--rounds R]
"""
import argparse
import os
import resource
import time


def run(path, mode, count, record):
    if os.path.exists(path):
        os.remove(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        if mode == "zeroed":
            zeros = b"\0" * (1 << 20)
            for _ in range(count * record // len(zeros) + 1):
                os.write(fd, zeros)
            os.fsync(fd)
        elif mode == "fallocate":
            os.posix_fallocate(fd, 0, count * record + (1 << 20))
            os.fsync(fd)
        buf = b"x" * record
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        for i in range(count):
            os.pwrite(fd, buf, i * record)
            os.fdatasync(fd)
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        os.close(fd)
        os.remove(path)
    cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
    print(f"{mode:9}  {wall / count * 1e6:7.1f} µs an fsync (wall)  CPU {cpu / count * 1e6:6.1f} µs")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=".", help="where the test file goes (the data disk; default .)")
    parser.add_argument("--record", type=int, default=4096, help="bytes written before each fsync (4096)")
    parser.add_argument("--count", type=int, default=3000, help="fsyncs in each mode (3000)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three modes (2)")
    args = parser.parse_args()
    path = os.path.join(args.dir, f"bench-fsync.{os.getpid()}.tmp")
    for _ in range(args.rounds):
        for mode in ("extend", "zeroed", "fallocate"):
            run(path, mode, args.count, args.record)


if __name__ == "__main__":
    main()
