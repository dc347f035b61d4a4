"""``muratune doctor``: a readiness check of a Ray cluster that exercises every accelerator path before a search."""
