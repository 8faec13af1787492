"""What a fit leaves for its user and for export: baselines, warnings and plots (``report``),
metrics.json and the summary (``fit_report``), run.json (``run_record``) and the out-of-fold
predictions (``held_out``).
"""
