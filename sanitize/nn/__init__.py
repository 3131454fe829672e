"""Training machinery shared by the detectors: the GPU-resident training loop (``engine``), the
model registry (``models``), device choice and seeding (``devices``), and the cache of trained
models (``cache``)."""
