"""Ray job: train a raygal model on the cluster this job is submitted to.

    ray job submit --working-dir . -- python jobs/train.py vae --data s3://b/mock \\
        --out s3://b/runs/vae --workers 8 --gpus-per-worker 1
    ray job submit --working-dir . -- python jobs/train.py nf --data s3://b/mock \\
        --out s3://b/runs/nf --vae s3://b/runs/vae --workers 8 --gpus-per-worker 1

Takes the options of ``raygal train`` (``python jobs/train.py --help``); an NF on images
needs the VAE trained before it (``--vae``: its output folder or model)."""
import sys

from raygal.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
