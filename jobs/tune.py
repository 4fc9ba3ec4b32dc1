"""Ray job: a hyper-parameter sweep (Ray Tune + ASHA) on the cluster.

    ray job submit --working-dir . -- python jobs/tune.py cfm --data s3://b/mock \\
        --out s3://b/sweeps/cfm --trials 16 --workers 2 --gpus-per-worker 1

Takes the options of ``raygal tune`` (``python jobs/tune.py --help``)."""
import sys

from raygal.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
