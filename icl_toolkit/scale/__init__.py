"""Scale-out: runs spread over many workers (Ray Data), and their sharded output.

- :mod:`~icl_toolkit.scale.output`: a folder of JSONL shards with a manifest (exactly-once, resumable);
- :mod:`~icl_toolkit.scale.ray_run`: ``icl predict --engine ray`` and ``icl rationales generate --engine ray``
  (imports ray only when called).
"""

from __future__ import annotations

from icl_toolkit.scale.output import ShardedOutput, read_sharded_records
from icl_toolkit.scale.ray_run import INSTALL_HINT, RayOptions, generate_rationales_ray, predict_ray, require_ray

__all__ = ["ShardedOutput", "read_sharded_records", "INSTALL_HINT", "RayOptions", "predict_ray",
           "generate_rationales_ray", "require_ray"]
