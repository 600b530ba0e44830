"""What a run shows after the fact: the HTML report (report: verdicts, plots, page) and experiment tracking
(tracking)."""
