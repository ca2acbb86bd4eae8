"""Create the embedded dataset and the info files.

    python tools/create_data.py synthetic --root-path data/synthetic --version v1.0-mini
    python tools/create_data.py nuscenes --root-path data/nuscenes --version v1.0-trainval --out-dir data/nuscenes --max-sweeps 10
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmdet3d.apis.runner import add_debug_flag, cli_main  # noqa: E402
from mmdet3d.datasets.nuscenes_converter import check_writable, create_infos  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    syn = sub.add_parser("synthetic", help="generate the embedded nuScenes-format dataset")
    syn.add_argument("--root-path", default="data/synthetic")
    syn.add_argument("--version", default="v1.0-mini", help="v1.0-mini (10 scenes) or v1.0-trainval")
    syn.add_argument("--scenes", type=int, default=None, help="number of scenes (default: 10 for mini)")
    syn.add_argument("--keyframes", type=int, default=None, help="keyframes per scene")
    syn.add_argument("--image-size", type=int, nargs=2, metavar=("W", "H"), default=None)
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--with-infos", action="store_true", help="also write the info files (same as running 'nuscenes')")
    syn.add_argument("--max-sweeps", type=int, default=10)

    nus = sub.add_parser("nuscenes", help="write nuscenes_infos_{train,val}.pkl for a nuScenes-format dataset")
    nus.add_argument("--root-path", default="data/synthetic")
    nus.add_argument("--version", default="v1.0-mini")
    nus.add_argument("--out-dir", default=None, help="default: the root path")
    nus.add_argument("--max-sweeps", type=int, default=10)
    nus.add_argument("--extra-tag", default="nuscenes", help="prefix of the written files")
    nus.add_argument("--no-database", action="store_true", help="skip the GT database for ObjectPaste")
    for command in (syn, nus):
        add_debug_flag(command)
    return parser.parse_args(argv)


@cli_main(extra_errors=(ValueError, KeyError, OSError))
def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.time()
    if args.command == "synthetic":
        from mmdet3d.datasets.synthetic import generate_dataset

        check_writable(args.root_path)
        kwargs = dict(root_path=args.root_path, version=args.version, num_scenes=args.scenes, seed=args.seed)
        if args.keyframes is not None:
            kwargs["keyframes_per_scene"] = args.keyframes
        if args.image_size is not None:
            kwargs["image_size"] = tuple(args.image_size)
        summary = generate_dataset(**kwargs)
        if args.with_infos:
            summary["infos"] = create_infos(args.root_path, args.version, None, args.max_sweeps, "nuscenes", True)
    else:
        summary = create_infos(args.root_path, args.version, args.out_dir, args.max_sweeps, args.extra_tag, not args.no_database)
    print(json.dumps(summary, indent=2, default=str))
    print(f"create_data.py {args.command}: done in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
