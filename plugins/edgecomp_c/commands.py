"""``edgecomp cmake-module``: where ``Edgecomp.cmake`` lives, for a firmware build's ``CMAKE_MODULE_PATH``."""

from __future__ import annotations

import pathlib

import click

CMAKE_DIR = pathlib.Path(__file__).resolve().parent / "cmake"


@click.command("cmake-module")
def cmake_module() -> None:
    """Print the folder of Edgecomp.cmake (edgecomp_add_model) for CMAKE_MODULE_PATH."""
    click.echo(str(CMAKE_DIR))
