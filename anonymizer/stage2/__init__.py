"""Stage II: the anonymizer networks, losses, solver, sampling and checkpoint format."""
