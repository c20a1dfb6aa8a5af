import os

# One compute thread per torch process: the suite runs the bot, engine workers and the test process side
# by side on CI's 2 cores, and oversubscribed torch threads made runs 3-10x slower there (BENCHMARKS.md).
# Set before anything imports torch; engine workers the tests spawn inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

pytest_plugins = ["fakediscord.plugin"]
