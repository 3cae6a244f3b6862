"""`python -m diffbench ...`: the `diffbench` command (also torchrun's module target: torchrun -m diffbench)."""

from diffbench.cli.app import main

if __name__ == "__main__":
    main()
