"""python -m benchmarks [options]: see benchmarks/cli.py or --help."""
import os

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # keep the profiler (peak-memory pass) quiet on stderr

from .cli import main  # noqa: E402

main()
