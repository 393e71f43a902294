"""``python -m aigc.cli``: the same as the ``aigc`` command."""

from aigc.cli import main

main(prog_name="aigc")
