"""The report: every results.json under a folder -> report.md with tables, intervals over seeds,
summary lines, plots, the commands and the set-up (markdown.py assembles it from loading,
grouping, cells, summary, plots, command_lines, describe and problems), and report.html (html.py)."""

from poslab.report.markdown import Report, write_report

__all__ = ["Report", "write_report"]
