"""Imported by every Python worker of the suite's embedded Ray as it starts, before it
takes any work (Ray's ``preload_python_modules``; see ``engine.tuner.init_ray``).

Ray starts (prestarts) one worker per CPU as soon as the driver connects, and a trial's
actor takes one of them. Modules named here are imported then, while the driver is still
building the search, instead of in each trial's first seconds. A ``runtime_env`` with a
``worker_process_setup_hook`` would do the same work, but Ray does not hand prestarted
workers to a job that has one: every trial would wait for a new process.

Importing this module keeps Ray's storage logger to warnings in the worker (one INFO line
per saved checkpoint otherwise drowns the progress display).
"""

import logging

logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
