"""``python -m glm.data``: list and download the public data sets (see :mod:`glm.data.download`)."""

from __future__ import annotations

import argparse
import sys

from glm.data import download as dl
from glm.data.paths import ENV_VAR, data_root


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m glm.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    root_help = f"data root (default: ${ENV_VAR}, else {data_root()})"

    p_list = sub.add_parser("list", help="show every registered file and whether it is present")
    p_list.add_argument("--root", help=root_help)
    p_list.add_argument("--verify", action="store_true", help="also check each present file's sha256")

    names = ", ".join([*dl.REGISTRY, *dl.GROUPS])
    p_dl = sub.add_parser("download", help="download data sets, verified by sha256")
    p_dl.add_argument("names", nargs="+", metavar="NAME", help=f"dataset or group: {names}")
    p_dl.add_argument("--root", help=root_help)
    p_dl.add_argument("--mirror", help=f"base URL of a mirror of the data root (or ${dl.MIRROR_ENV})")
    p_dl.add_argument("--force", action="store_true", help="replace present files whose sha256 differs")
    p_dl.add_argument("--timeout", type=float, default=60.0, help="seconds per connection (default 60)")

    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            print(dl.listing(args.root, verify=args.verify))
            return 0
        dl.download(args.names, args.root, mirror=args.mirror, force=args.force, timeout=args.timeout)
        return 0
    except (ValueError, dl.DownloadError) as err:  # user-facing errors: a message, not a traceback
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
