"""Small helpers every part shares: atomic file writes, the progress reporter, the device, row lookups.

Nothing here imports torch at module level except :mod:`tracinflow._util.device`.
"""
