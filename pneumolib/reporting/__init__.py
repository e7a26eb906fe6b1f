"""Stage 6, reporting: tables, figures, studies and the HTML report, from run files only.
"""
