"""``python -m smp3d`` runs the ``smp3d`` command line (also under ``torchrun -m smp3d train ...``)."""

from .cli import main

raise SystemExit(main())
