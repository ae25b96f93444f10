"""Online learning: trains on log files as they land and exports versions for serving.

It orchestrates the other layers (beam_pipelines' transforms, the tfkf model,
serving's export), so it sits above them; `python -m online.train`.
"""
