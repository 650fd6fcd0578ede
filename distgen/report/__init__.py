"""Figures and reports (the only package that imports matplotlib; Agg backend, no display).

* :func:`distgen.report.run_report.write_run_report`: ``distgen report OUT_DIR``.
* :func:`distgen.report.validation_report.write_validation_report`:
  ``distgen validate --report DIR``.
"""
