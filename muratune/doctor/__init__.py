"""``muratune doctor``: a readiness check of a Ray cluster that exercises every accelerator path before a search."""

from muratune.doctor.report import Check, DoctorReport
from muratune.doctor.run import all_checks, run_doctor

__all__ = ["Check", "DoctorReport", "all_checks", "run_doctor"]
