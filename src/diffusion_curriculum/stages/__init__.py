"""Pipeline stages: thin command-line programs, one per stage (``python -m stages.<name>``)."""
