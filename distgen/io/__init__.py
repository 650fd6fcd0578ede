"""Files in and out: run folders, shard parts, Parquet series, the site CSV, manifests and
request traces. The one package that imports pyarrow."""

from distgen.io.csvout import SITE_CSV_COLUMNS, write_site_csv
from distgen.io.manifest import file_digest, read_manifest, verify_manifest
from distgen.io.outdir import (MANIFEST_NAME, MARKER_NAME, PARTS_DIR_NAME, RUN_FORMAT,
                               atomic_path, commit_file, finalize_output_dir, is_complete,
                               is_ours, parts_dir, prepare_output_dir)
from distgen.io.parts import PartWriter, completed_shards, open_part
from distgen.io.series import SeriesWriter, read_series, read_series_metadata
from distgen.io.trace import read_request_trace

__all__ = [
    "MANIFEST_NAME", "MARKER_NAME", "PARTS_DIR_NAME", "RUN_FORMAT", "SITE_CSV_COLUMNS",
    "PartWriter", "SeriesWriter", "atomic_path", "commit_file", "completed_shards",
    "file_digest", "finalize_output_dir", "is_complete", "is_ours", "open_part", "parts_dir",
    "prepare_output_dir", "read_manifest", "read_request_trace", "read_series",
    "read_series_metadata", "verify_manifest", "write_site_csv",
]
