"""Reports: one self-contained HTML file (plots embedded) and a Markdown twin, from run folders."""

from finequant.report.collect import Collected, collect
from finequant.report.render import write_report

__all__ = ["Collected", "collect", "write_report"]
