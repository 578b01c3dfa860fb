"""The bundled demo: a recipe and a pipeline that run anywhere, on the CPU, in seconds.

``orchestrator-fsm run`` with no arguments uses both: :func:`demo_recipe` gives the
path of the bundled ``recipe.yaml`` (read through :mod:`importlib.resources`, so it
works from an installed wheel as well as from a checkout), and ``DEMO_ENTRY`` names
the pipeline, :func:`orchestrator_fsm.demo.pipeline.train`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Final

__all__ = ["DEMO_ENTRY", "DEMO_RECIPE_NAME", "demo_recipe"]

DEMO_RECIPE_NAME: Final = "recipe.yaml"

#: The ``--entry`` the CLI runs when none is given.
DEMO_ENTRY: Final = "orchestrator_fsm.demo.pipeline:train"


@contextmanager
def demo_recipe() -> Iterator[Path]:
    """The bundled demo recipe as a file on disk, for the duration of the block.

    Installed normally it is the package's own file; from a zipped install it is a
    temporary copy, removed when the block ends.
    """
    with resources.as_file(resources.files(__name__).joinpath(DEMO_RECIPE_NAME)) as path:
        yield Path(path)
