"""`napari-unet export --bioimageio`: a model version as a bioimage.io package, from the command line.

Everything `bioimageio_export.check_export` checks (the model, the output file and folder, the licence,
an author) is checked before TensorFlow is imported; the CLI's handler turns the errors into one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from .bioimageio_export import (
    DEFAULT_LICENSE,
    check_export,
    check_license,
    export_package,
    parse_author,
    parse_cite,
)
from .errors import InputError


def add_export_parser(sub: Any, path_type: Any, load_tensorflow: Callable[[argparse.Namespace], None]) -> None:
    """The ``export`` subcommand on the CLI's subparsers; `path_type` is the CLI's path option type and
    `load_tensorflow(args)` its TensorFlow start-up (quiet unless --verbose)."""
    p = sub.add_parser("export", help="export a model version as a bioimage.io package (.zip)")
    p.add_argument("--bioimageio", action="store_true", required=True,
                   help="write a bioimage.io model package (the only export format so far)")  # fmt: skip
    p.add_argument("--model", type=path_type, required=True, help="model folder (its current version) or version folder")
    p.add_argument("--out", type=path_type, required=True, help="package file to write, ending in .zip")
    p.add_argument("--author", action="append", default=None, metavar="NAME",
                   help="an author, 'Name' or 'Name <email>'; repeat for several (default: the model's metadata)")  # fmt: skip
    p.add_argument("--license", default=None, metavar="SPDX",
                   help=f"SPDX licence identifier, e.g. MIT (default: the model's metadata, else {DEFAULT_LICENSE})")
    p.add_argument("--cite", action="append", default=None, metavar="TEXT/DOI",
                   help="a citation holding a DOI or URL; repeat for several (default: the model's metadata, else "
                        "the U-Net paper)")  # fmt: skip
    p.add_argument("--sample", type=path_type, default=None, metavar="IMAGE",
                   help="image the test tensors and the cover are made from (default: the model's replay patches)")
    p.add_argument("--overwrite", action="store_true", help="replace a package napari-unet exported before")
    p.set_defaults(func=run_export, load_tensorflow=load_tensorflow)


def run_export(args: argparse.Namespace) -> int:
    """Check everything, then export; prints the package path."""
    authors = [parse_author(a) for a in args.author] if args.author else None
    cites = [parse_cite(c) for c in args.cite] if args.cite else None
    if args.license is not None:
        check_license(args.license)
    check_export(args.model, args.out, license=args.license, authors=authors, overwrite=args.overwrite)
    sample = _read_sample(args.sample) if args.sample is not None else None
    args.load_tensorflow(args)

    def progress(done: int, total: int) -> None:
        print(f"\rexporting: step {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    path = export_package(
        args.model, args.out, authors=authors, license=args.license, cite=cites, overwrite=args.overwrite,
        sample=sample, progress=progress,
    )  # fmt: skip
    print(path)
    return 0


def _read_sample(path: Any) -> Any:
    from .layout import read_image, to_core

    if not path.is_file():
        raise InputError(f"The sample image {path} does not exist.")
    array, layout = read_image(path)
    return to_core(array, layout)
