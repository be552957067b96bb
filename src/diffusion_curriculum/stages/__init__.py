"""Pipeline stages: thin command-line programs, one per stage
(``python -m diffusion_curriculum.stages.<name>`` or ``diffusion-curriculum <name>``); the only layer
that reads params files."""
