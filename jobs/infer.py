"""Ray job: a posterior catalog for a survey (restartable: re-submit to finish).

    ray job submit --working-dir . -- python jobs/infer.py --model s3://b/runs/cfm/model \\
        --data s3://b/survey --out s3://b/posteriors/cfm --solver rk4-10 --gpus-per-actor 1

Takes the options of ``raygal infer``."""
import sys

from raygal.cli import main

if __name__ == "__main__":
    sys.exit(main(["infer", *sys.argv[1:]]))
