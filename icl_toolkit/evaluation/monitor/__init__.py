"""Watching a served predictor: a pseudonymous prediction log, outcome feedback, and windowed reports with
alerts.

- :mod:`.log`: :class:`MonitorLog` appends one record per prediction (``predictions.jsonl``) and one per
  outcome (``feedback.jsonl``) in a folder; ids are keyed pseudonyms (HMAC-SHA256), never the patient id,
  the date of birth or any history text.
- :mod:`.reference`: the demonstration pool summarised for comparison (``reference.json``, written by ``icl serve``).
- :mod:`.estimate`: performance estimated from the predictions before outcomes arrive (confidence-based).
- :mod:`.drift`: drift tests: numeric inputs and predictions, code mix, vocabulary, a domain classifier.
- :mod:`.streams`: simulated changes of the patients served (coding change, shorter histories, older patients).
- :mod:`.report`: ``icl monitor``: per time window, volume, estimated performance, drift against the reference,
  the retrieval signals, and calibration, AUROC and subgroup gaps once outcomes have arrived, each checked
  against a configurable alert threshold.
"""

from icl_toolkit.evaluation.monitor.log import MonitorLog, Pseudonymizer, load_key, read_log
from icl_toolkit.evaluation.monitor.report import AlertSettings, monitor_report, parse_window, write_monitor_page

__all__ = [
    "MonitorLog",
    "Pseudonymizer",
    "load_key",
    "read_log",
    "AlertSettings",
    "monitor_report",
    "parse_window",
    "write_monitor_page",
]
