"""Train a U-Net: `python train_keras.py --data DIR --run-dir RUN [--max-time S]`.

The same as `unet-keras train`; `--help` lists every setting and its default.
"""

import sys

from unet_keras.cli import run

if __name__ == "__main__":
    run(["train", *sys.argv[1:]])
