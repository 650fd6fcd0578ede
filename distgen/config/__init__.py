"""Run configuration: schema (frozen dataclasses), loading (YAML + overrides) and validation.

Importing this package (or ``distgen.config.schema``) does not import omegaconf: ``load`` imports
it only inside :func:`load_config`.
"""

from distgen.config.load import (
    ConfigFileError,
    config_from_dict,
    config_hash,
    config_to_dict,
    load_config,
)
from distgen.config.schema import (
    ARRIVAL_KINDS,
    BACKENDS,
    BURST_KINDS,
    ROUTINGS,
    TRAFFIC_MODES,
    BurstConfig,
    DiurnalConfig,
    FacilityConfig,
    ModulationConfig,
    NonGpuConfig,
    OutputConfig,
    RayConfig,
    ReplayConfig,
    RunConfig,
    TrafficConfig,
)
from distgen.config.validate import (
    expand_row_serving,
    output_resolutions,
    parse_start_time,
    start_hour_of_day,
    start_time_utc,
    utc_offset_s,
    validate,
)

__all__ = [
    "ARRIVAL_KINDS", "BACKENDS", "BURST_KINDS", "ROUTINGS",
    "TRAFFIC_MODES",
    "BurstConfig", "ConfigFileError", "DiurnalConfig", "FacilityConfig", "ModulationConfig",
    "NonGpuConfig", "OutputConfig", "RayConfig", "ReplayConfig", "RunConfig", "TrafficConfig",
    "config_from_dict", "config_hash", "config_to_dict", "expand_row_serving", "load_config",
    "output_resolutions", "parse_start_time", "start_hour_of_day", "start_time_utc",
    "utc_offset_s", "validate",
]
