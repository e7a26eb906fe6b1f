"""Stage 7, commands: what ``pneumo`` runs (``pneumolib.cli`` parses the command line).

``reproduce`` (every notebook through papermill), ``predict`` (masks for any X-ray
files), ``screening`` (notebook 06), ``bench`` (speed).
"""
