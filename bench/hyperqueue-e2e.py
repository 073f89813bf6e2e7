#!/usr/bin/env python3
"""HyperQueue end to end, for herd-bench (item 3 of the benchmark suite).

Starts HyperQueue's LocalCluster (server and one worker with --cores cores, inside this
process: the PyPI wheel carries them in its extension module), waits for a one-task warm-up job
(so the worker is connected), then submits one job of --tasks `true` programs and waits for it.
Each task's stdout and stderr go to files in a temporary folder, HyperQueue's default (herd
keeps task output too).

HyperQueue's Python wait (`Client.wait_for_jobs`) asks the server once a second, so the time to
its return overstates the run by up to a second. The figure used is therefore the time from the
submit call to the creation of the last task's output files (made as a task starts): a slight
underestimate that gives HyperQueue the benefit of the doubt. Both are printed.

Prints one JSON object as the last line of stdout (HyperQueue prints its own table before it):
{"tasks", "cores", "seconds" (to the last start), "seconds_to_wait_return",
"tasks_per_second", "version"}. Run it with the venv bench/setup.sh creates.
"""

import argparse
import json
import logging
import os
import sys
import tempfile
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, required=True, help="how many `true` tasks")
    parser.add_argument("--cores", type=int, required=True, help="the worker's cores")
    args = parser.parse_args()
    if args.tasks < 1 or args.cores < 1:
        parser.error("--tasks and --cores must be at least 1")

    try:
        import hyperqueue
        from hyperqueue import Job, LocalCluster
        from hyperqueue.cluster import WorkerConfig
    except ImportError as error:
        print(
            f"hyperqueue-e2e.py: cannot import hyperqueue ({error}); run bash bench/setup.sh and use "
            "the python it prints",
            file=sys.stderr,
        )
        return 1
    logging.disable(logging.INFO)

    with tempfile.TemporaryDirectory(prefix="herd-bench-hq-") as work:
        server_dir = os.path.join(work, "server")
        warm_up_dir = os.path.join(work, "warm-up")
        task_dir = os.path.join(work, "tasks")
        os.makedirs(warm_up_dir)
        os.makedirs(task_dir)
        with LocalCluster(server_dir=server_dir, worker_config=WorkerConfig(cores=args.cores)) as cluster:
            client = cluster.client()
            warm_up = Job(default_workdir=warm_up_dir)
            warm_up.program(["true"])
            client.wait_for_jobs([client.submit(warm_up)])

            job = Job(default_workdir=task_dir)
            for _ in range(args.tasks):
                job.program(["true"])
            begin = time.time()
            submitted = client.submit(job)
            succeeded = client.wait_for_jobs([submitted], raise_on_error=False)
            seconds_to_wait_return = time.time() - begin
            outputs = [entry.stat().st_mtime for entry in os.scandir(task_dir)]
        if len(outputs) != 2 * args.tasks:
            print(
                f"hyperqueue-e2e.py: expected {2 * args.tasks} output files, found {len(outputs)}",
                file=sys.stderr,
            )
            return 1
        seconds = max(outputs) - begin
    if not succeeded:
        print("hyperqueue-e2e.py: some HyperQueue tasks failed", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "tasks": args.tasks,
                "cores": args.cores,
                "seconds": seconds,
                "seconds_to_wait_return": seconds_to_wait_return,
                "tasks_per_second": args.tasks / seconds,
                "version": hyperqueue.get_version(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
