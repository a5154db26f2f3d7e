"""Reports: one self-contained HTML file (plots embedded) and a Markdown twin, from run folders."""

from finequant.reporting.collect import Collected, collect
from finequant.reporting.render import write_report

report = write_report  # the verb: ``finequant.report(paths, "report.html")``

__all__ = ["Collected", "collect", "report", "write_report"]
