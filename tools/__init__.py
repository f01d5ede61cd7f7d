"""Maintenance scripts run by hand or by ``make`` (never imported by the ``ghostreview`` library)."""
