"""Past one machine: runs spread over Ray Data replicas, written as shards (exactly once, resumable).

- :mod:`~icl_toolkit.scale.ray_run`: ``icl predict --engine ray`` and ``icl rationales generate --engine ray``
  (imports ray only when called); their output is :class:`~icl_toolkit.inference.output.ShardedOutput`.
"""

from __future__ import annotations

from icl_toolkit.inference.output import ShardedOutput, read_sharded_records
from icl_toolkit.scale.ray_run import INSTALL_HINT, RayOptions, generate_rationales_ray, predict_ray, require_ray

__all__ = ["ShardedOutput", "read_sharded_records", "INSTALL_HINT", "RayOptions", "predict_ray",
           "generate_rationales_ray", "require_ray"]
