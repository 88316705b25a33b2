#!/usr/bin/env python3
"""Runs commands and measures them precisely: wall time, and peak RSS from the kernel (wait4).

Node cannot read a child's rusage, so the benchmark driver (bench/bench.ts) hands its commands to
this script as one JSON object on stdin and reads one JSON object back:

  {"mode": "repeat", "argv": [...], "env": {...}, "cwd": "...", "runs": 7, "warmup": 2,
   "prepare": [...argv run untimed before every run, or null]}
    -> {"wall_ms": [...], "max_rss_kb": [...], "status": [...]}

  {"mode": "storm", "commands": [{"argv": [...], "env": {...}, "cwd": "..."}, ...]}
    -> {"wall_ms": total, "status": [...], "max_rss_kb": [...], "peak_sum_rss_kb": n}
       (all started at once; the summed RSS of the live processes is sampled every millisecond)
"""
import json
import os
import subprocess
import sys
import time


def spawn(command):
    return subprocess.Popen(command["argv"], env=command.get("env"), cwd=command.get("cwd"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait(process):
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss


def once(command):
    started = time.perf_counter()
    process = spawn(command)
    status, rss = wait(process)
    return (time.perf_counter() - started) * 1000, rss, status


def repeat(spec):
    result = {"wall_ms": [], "max_rss_kb": [], "status": []}
    for index in range(spec.get("warmup", 1) + spec["runs"]):
        if spec.get("prepare"):
            subprocess.run(spec["prepare"], env=spec.get("env"), cwd=spec.get("cwd"), check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall, rss, status = once(spec)
        if index >= spec.get("warmup", 1):
            result["wall_ms"].append(wall)
            result["max_rss_kb"].append(rss)
            result["status"].append(status)
    return result


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def storm(spec):
    started = time.perf_counter()
    processes = [spawn(command) for command in spec["commands"]]
    live = {process.pid: process for process in processes}
    results = {}
    peak = 0
    while live:
        peak = max(peak, sum(rss_kb(pid) for pid in live))
        for pid in list(live):
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                results[pid] = (os.waitstatus_to_exitcode(status), usage.ru_maxrss)
                del live[pid]
        time.sleep(0.001)
    return {
        "wall_ms": (time.perf_counter() - started) * 1000,
        "status": [results[p.pid][0] for p in processes],
        "max_rss_kb": [results[p.pid][1] for p in processes],
        "peak_sum_rss_kb": peak,
    }


if __name__ == "__main__":
    request = json.load(sys.stdin)
    json.dump(repeat(request) if request["mode"] == "repeat" else storm(request), sys.stdout)
