"""Benchmarks anyone can rerun (see BENCHMARKS.md).

- ``python -m bench.load``: the real bot against the loopback Discord, U users x J jobs, against the engine
  alone on the same jobs;
- ``python -m bench.engine``: engine images/s over a batch-size sweep against a naive diffusers baseline;
- ``bash bench/gpu.sh``: the SD 1.5 sweep on an NVIDIA GPU, with a JSON summary;
- ``python -m bench.scaleout``: throughput with 1, 2, 4 NATS workers.

Benchmarks measure; tests never assert timings (tests/bench only checks that the reports are well formed).
"""
