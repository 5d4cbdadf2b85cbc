import os

# Paddle's import pins OMP_NUM_THREADS=1; keep tests deterministic and light on a shared box.
os.environ.setdefault("OMP_NUM_THREADS", "1")
