"""Parameter sweeps: a grid (and random samples) of overrides of a base run configuration.

* :mod:`.spec` parses a sweep file and plans its points (no Ray);
* :mod:`.run` runs the points through an executor (:mod:`distgen.distributed.executor`);
* :mod:`.results` reads each point's facility metrics and writes the sweep table.
"""

from distgen.sweep.results import (METRIC_COLUMNS, format_sweep, point_metrics, table_columns,
                                   write_table)
from distgen.sweep.run import run_sweep
from distgen.sweep.spec import (P99_RESOLUTION_S, Point, SweepSpec, load_sweep, parse_sweep,
                                point_config, point_id, sweep_points)

__all__ = ["METRIC_COLUMNS", "P99_RESOLUTION_S", "Point", "SweepSpec", "format_sweep",
           "load_sweep", "parse_sweep", "point_config", "point_id", "point_metrics",
           "run_sweep", "sweep_points", "table_columns", "write_table"]
