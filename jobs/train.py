"""Ray job: train a raygal model on the cluster this job is submitted to.

    ray job submit --working-dir . -- python jobs/train.py nf --data s3://b/mock \\
        --out s3://b/runs/nf --workers 8 --gpus-per-worker 1

Takes the options of ``raygal train`` (``python jobs/train.py --help``)."""
import sys

from raygal.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
