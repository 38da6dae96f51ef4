"""The dashboard: stored completions, distilling a selection, jobs, models, reports."""
