"""Converts between `export.ts --format sltrain` folders and the official SLTrain layout.

    PYTHONPATH=torch python3 -m sltrain_torch.convert to-official EXPORT_DIR OFFICIAL_DIR
    PYTHONPATH=torch python3 -m sltrain_torch.convert from-official OFFICIAL_DIR EXPORT_DIR

The target folder must not exist; it appears only when complete. See `official.py` for the names.
"""

import argparse
import sys

from .errors import SltrainTorchError
from .official import from_official, to_official


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("direction", choices=["to-official", "from-official"])
    ap.add_argument("src")
    ap.add_argument("out")
    a = ap.parse_args(argv)
    try:
        (to_official if a.direction == "to-official" else from_official)(a.src, a.out)
    except SltrainTorchError as e:
        print(f"sltrain_torch.convert: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
