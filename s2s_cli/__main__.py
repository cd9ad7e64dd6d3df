"""``python -m s2s_cli`` (also what ``torchrun -m s2s_cli train`` runs)."""

from s2s_cli.cli import main

if __name__ == "__main__":
    main()
