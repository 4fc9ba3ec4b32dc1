"""Ray job: frozen-VAE features for the NF stage, written beside the data.

    ray job submit --working-dir . -- python jobs/extract_features.py \\
        --vae s3://b/runs/vae/model --data s3://b/mock --actors 4 --gpus 1

Takes the options of ``raygal features``."""
import sys

from raygal.cli import main

if __name__ == "__main__":
    sys.exit(main(["features", *sys.argv[1:]]))
