"""Export a model as the next SavedModel version for TensorFlow Serving.

    python export/export_model.py --model RUN_OR_KERAS_FILE --base-path BASE [--version N]

The same as `unet-keras export`; `--help` lists every option and its default.
"""

import sys

from unet_keras.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
