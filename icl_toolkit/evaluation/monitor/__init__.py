"""Watching a served predictor: a pseudonymous prediction log, outcome feedback, and windowed reports with
alerts.

- :mod:`.log`: :class:`MonitorLog` appends one record per prediction (``predictions.jsonl``) and one per
  outcome (``feedback.jsonl``) in a folder; ids are keyed pseudonyms (HMAC-SHA256), never the patient id,
  the date of birth or any history text.
- :mod:`.report`: ``icl monitor``: per time window, volume, input mix and its population stability index
  against the demonstration pool, mean probability against the observed rate, calibration, AUROC and
  subgroup gaps once outcomes have arrived, each checked against a configurable alert threshold.
"""

from icl_toolkit.evaluation.monitor.log import MonitorLog, Pseudonymizer, load_key, read_log
from icl_toolkit.evaluation.monitor.report import AlertSettings, monitor_report, parse_window, psi

__all__ = [
    "MonitorLog",
    "Pseudonymizer",
    "load_key",
    "read_log",
    "AlertSettings",
    "monitor_report",
    "parse_window",
    "psi",
]
