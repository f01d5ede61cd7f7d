"""Analysis: score rows of every model in, z-scores, intervals, rankings and the published report out.

Reads metric directions, labels and units from ``scoring.metric.MetricInfo`` records it is given; imports no torch
and no generation code.
"""
