"""What a run shows after the fact: the HTML report (report) and experiment tracking (tracking)."""
