"""Captured samples: raw inputs devices kept under a capture order, for retraining.

``tables`` (the samples and the capture orders), ``store`` (content-addressed files and
the per-device quota), ``capture`` (signing capture orders for devices, and which capture
is on), ``schemas`` (what the API accepts and returns).
"""
