"""``python -m finequant`` (and ``torchrun -m finequant finetune ...``)."""

from finequant.cli import main

main()
