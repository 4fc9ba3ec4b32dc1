"""Static checks of the cluster configs in cluster/: the Ray cluster launcher YAML
(cluster/aws-gpu.yaml) and the KubeRay manifests (cluster/kuberay/raycluster.yaml, rayjob.yaml).

No cluster is started and no cloud or Kubernetes API is called: neither EC2 nor a Kubernetes
cluster can be reached from where this suite runs. What is checked instead:

* the launcher config against Ray's own JSON schema (ray/autoscaler/ray-schema.json from the
  installed Ray) and through Ray's own ``prepare_config`` + ``validate_config``, the steps
  ``ray up`` runs before it talks to AWS; then the things those do not check (node-type bounds,
  GPU resources against the instance types, the install and start commands, auth, no keys);
* the KubeRay manifests for the fields the operator requires (field names per KubeRay's
  ray.io/v1 Go types), for the types it requires (rayStartParams values must be strings),
  autoscaling and GPU groups, and the RayJob's entrypoint against the scripts in jobs/.
"""
from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LAUNCHER = CLUSTER / "aws-gpu.yaml"
RAYCLUSTER = CLUSTER / "kuberay" / "raycluster.yaml"
RAYJOB = CLUSTER / "kuberay" / "rayjob.yaml"
README = CLUSTER / "README.md"
ALL_FILES = (LAUNCHER, RAYCLUSTER, RAYJOB, README)

JOB_SCRIPTS = {"train", "tune", "extract_features", "infer"}

# vCPUs and GPUs of the EC2 types a config may name (AWS's published figures).
EC2_TYPES = {
    "m6i.xlarge": (4, 0), "m6i.2xlarge": (8, 0), "m6i.4xlarge": (16, 0),
    "m6i.8xlarge": (32, 0), "m5.large": (2, 0), "m5.2xlarge": (8, 0),
    "g5.xlarge": (4, 1), "g5.2xlarge": (8, 1), "g5.4xlarge": (16, 1), "g5.8xlarge": (32, 1),
    "g5.12xlarge": (48, 4), "g5.24xlarge": (96, 4), "g5.48xlarge": (192, 8),
    "g6.xlarge": (4, 1), "g6.2xlarge": (8, 1), "g6.12xlarge": (48, 4),
    "g6.48xlarge": (192, 8), "p4d.24xlarge": (96, 8), "p5.48xlarge": (192, 8),
}


def _constraint_pin(name: str) -> str:
    """The version constraints.txt pins ``name`` to."""
    for line in (REPO / "constraints.txt").read_text().splitlines():
        m = re.match(rf"^{re.escape(name)}==(\S+)", line.strip(), re.IGNORECASE)
        if m:
            return m.group(1)
    raise AssertionError(f"constraints.txt pins no {name}")


# ----------------------------------------------------------------------------------------------
# Ray cluster launcher (ray up)
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def launcher() -> dict:
    cfg = yaml.safe_load(LAUNCHER.read_text())
    assert isinstance(cfg, dict)
    return cfg


def _worker_types(cfg: dict) -> dict:
    return {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}


def _all_commands(cfg: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands",
            "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
    return [c for k in keys for c in (cfg.get(k) or [])]


def test_launcher_matches_ray_schema(launcher):
    """The schema `ray up` validates against, as shipped with the installed Ray."""
    jsonschema = pytest.importorskip("jsonschema")
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    assert schema_path.exists(), schema_path
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(launcher, schema)


def test_launcher_passes_rays_own_preparation(launcher):
    """prepare_config (merge with the AWS defaults) and validate_config, as `ray up` does."""
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(launcher))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    # The common setup runs on the head and on the workers.
    assert prepared["head_setup_commands"][: len(launcher["setup_commands"])] == \
        launcher["setup_commands"]
    assert prepared["worker_setup_commands"][: len(launcher["setup_commands"])] == \
        launcher["setup_commands"]


def test_launcher_top_level_fields(launcher):
    assert launcher["cluster_name"]
    assert isinstance(launcher["max_workers"], int) and launcher["max_workers"] >= 1
    assert launcher["upscaling_speed"] > 0
    assert isinstance(launcher["idle_timeout_minutes"], (int, float))
    assert launcher["idle_timeout_minutes"] > 0
    provider = launcher["provider"]
    assert provider["type"] == "aws"
    assert re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", provider["region"])
    zones = provider["availability_zone"].split(",")
    assert zones and all(z.strip().startswith(provider["region"]) for z in zones)
    assert isinstance(provider["cache_stopped_nodes"], bool)
    assert launcher["auth"]["ssh_user"] == "ubuntu"


def test_head_type_and_worker_bounds(launcher):
    types = launcher["available_node_types"]
    head = launcher["head_node_type"]
    assert head in types, "head_node_type must name one of available_node_types"
    assert types[head].get("max_workers", 0) == 0, "no extra head-type nodes as workers"
    assert not types[head]["resources"].get("GPU"), "the head is a CPU node"
    workers = _worker_types(launcher)
    assert workers
    for name, t in workers.items():
        lo, hi = t.get("min_workers", 0), t.get("max_workers")
        assert hi is not None, f"{name}: set max_workers explicitly"
        assert 0 <= lo <= hi <= launcher["max_workers"], name
    assert sum(t.get("min_workers", 0) for t in types.values()) <= launcher["max_workers"]


def test_gpu_worker_types_declare_gpus(launcher):
    workers = _worker_types(launcher)
    gpu_types = {n: t for n, t in workers.items() if t["resources"].get("GPU", 0) > 0}
    assert gpu_types, "at least one GPU worker type"
    counts = {t["resources"]["GPU"] for t in gpu_types.values()}
    assert 1 in counts and max(counts) > 1, "a 1-GPU type and a multi-GPU type"
    for name, t in launcher["available_node_types"].items():
        itype = t["node_config"]["InstanceType"]
        res = t["resources"]
        assert isinstance(res.get("CPU"), int) and res["CPU"] >= 1, name
        if itype not in EC2_TYPES:
            continue
        vcpus, gpus = EC2_TYPES[itype]
        assert res.get("GPU", 0) == gpus, f"{name}: {itype} has {gpus} GPU(s)"
        assert res["CPU"] <= vcpus, f"{name}: {itype} has {vcpus} vCPUs"
        if gpus:
            # CPUs next to each GPU for Ray Data's read/decode tasks.
            assert res["CPU"] >= 2 * gpus, name


def test_every_node_gets_s3_from_an_instance_profile(launcher):
    for name, t in launcher["available_node_types"].items():
        nc = t["node_config"]
        assert nc.get("ImageId"), f"{name}: ImageId"
        prof = nc.get("IamInstanceProfile")
        assert isinstance(prof, dict) and (prof.get("Name") or prof.get("Arn")), \
            f"{name}: needs an IamInstanceProfile (workers get none by default: no S3 access)"
    assert "aws_credentials" not in launcher["provider"]


def test_file_mounts_sync_the_working_copy_and_the_token(launcher):
    mounts = launcher["file_mounts"]
    assert mounts.get("/home/ubuntu/raygal") == "."
    # "." is relative to where `ray up` runs: the repository root.
    assert (REPO / "pyproject.toml").exists()
    assert mounts.get("~/.ray/auth_token") == "~/.ray/auth_token", \
        "the token file is synced, never written into the config"
    assert ".gitignore" in launcher.get("rsync_filter", []), "keeps .venv etc. off the nodes"


def test_setup_installs_pinned_torch_then_raygal(launcher):
    cmds = launcher["setup_commands"]
    torch_pin = _constraint_pin("torch")
    torch_idx = [i for i, c in enumerate(cmds) if re.search(r"pip install .*\btorch==", c)]
    raygal_idx = [i for i, c in enumerate(cmds)
                  if re.search(r"pip install .*-e /home/ubuntu/raygal\b", c)]
    assert torch_idx, "torch installed explicitly"
    assert raygal_idx, "raygal installed from the synced working copy"
    assert torch_idx[0] < raygal_idx[0], "torch first, then raygal"
    assert f"torch=={torch_pin}" in cmds[torch_idx[0]], f"torch pinned as constraints.txt: {torch_pin}"
    assert "-c /home/ubuntu/raygal/constraints.txt" in cmds[raygal_idx[0]]
    assert (REPO / "constraints.txt").exists()
    # Ray on the nodes is whatever constraints.txt pins: the same as the local client.
    import ray

    assert _constraint_pin("ray") == ray.__version__
    # The autoscaler on the head launches EC2 instances through boto3.
    assert any(re.search(r"pip install .*\bboto3\b", c) for c in launcher["head_setup_commands"])


def test_start_commands(launcher):
    head = " ; ".join(launcher["head_start_ray_commands"])
    worker = " ; ".join(launcher["worker_start_ray_commands"])
    assert launcher["head_start_ray_commands"][0].strip() == "ray stop"
    assert launcher["worker_start_ray_commands"][0].strip() == "ray stop"
    assert "ray start --head" in head and "--port=6379" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    hosts = re.findall(r"--dashboard-host[= ](\S+)", head)
    assert hosts == ["127.0.0.1"], "dashboard (and job API) on the head's loopback only"
    assert "--address=$RAY_HEAD_IP:6379" in worker
    for cmds in (head, worker):
        assert "RAY_AUTH_MODE=token" in cmds, "token authentication on every node"


def test_commands_are_valid_shell(launcher):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash to check the command syntax with")
    for cmd in _all_commands(launcher):
        r = subprocess.run([bash, "-n", "-c", cmd], capture_output=True, text=True)
        assert r.returncode == 0, f"{cmd!r}: {r.stderr}"


# ----------------------------------------------------------------------------------------------
# KubeRay
# ----------------------------------------------------------------------------------------------
def _load_kind(path: Path, kind: str) -> dict:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    found = [d for d in docs if d.get("kind") == kind]
    assert len(found) == 1, f"{path.name}: expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def raycluster() -> dict:
    return _load_kind(RAYCLUSTER, "RayCluster")


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return _load_kind(RAYJOB, "RayJob")


def _ray_container(template: dict) -> dict:
    containers = template["spec"]["containers"]
    assert containers, "a pod template needs containers"
    # KubeRay treats the first container as the Ray container.
    c = containers[0]
    assert c.get("name") and c.get("image"), "Ray container needs a name and an image"
    return c


def _check_cluster_spec(spec: dict, where: str) -> None:
    import ray

    assert spec["rayVersion"] == ray.__version__ == _constraint_pin("ray"), where
    assert spec.get("enableInTreeAutoscaling") is True, where
    auto = spec["autoscalerOptions"]
    assert isinstance(auto["idleTimeoutSeconds"], int) and auto["idleTimeoutSeconds"] > 0
    assert auto["upscalingMode"] in {"Default", "Aggressive", "Conservative"}
    assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: token auth"

    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", \
        f"{where}: the head Service stays private"
    assert not head.get("enableIngress"), where
    params = head["rayStartParams"]
    assert all(isinstance(v, str) for v in params.values()), \
        f"{where}: rayStartParams is map[string]string in the CRD: quote every value"
    # KubeRay reaches the dashboard/job API on the pod IP (operator, submitter, Service).
    assert params.get("dashboard-host") == "0.0.0.0", where
    head_c = _ray_container(head["template"])
    images = {head_c["image"]}
    assert head_c["resources"]["limits"].get("cpu") and head_c["resources"]["limits"].get("memory")

    groups = spec["workerGroupSpecs"]
    names = [g["groupName"] for g in groups]
    assert len(names) == len(set(names)), f"{where}: groupName must be unique"
    gpu_groups, cpu_groups = [], []
    for g in groups:
        assert isinstance(g["rayStartParams"], dict), f"{where}/{g['groupName']}: rayStartParams"
        assert all(isinstance(v, str) for v in g["rayStartParams"].values())
        lo, n, hi = g["minReplicas"], g.get("replicas", 0), g["maxReplicas"]
        assert all(isinstance(x, int) for x in (lo, n, hi))
        assert 0 <= lo <= n <= hi, f"{where}/{g['groupName']}: minReplicas <= replicas <= maxReplicas"
        c = _ray_container(g["template"])
        images.add(c["image"])
        limits = c["resources"]["limits"]
        requests = c["resources"].get("requests", {})
        assert limits.get("cpu") and limits.get("memory"), \
            f"{where}/{g['groupName']}: Ray sizes the node from the limits"
        if "nvidia.com/gpu" in limits:
            assert int(limits["nvidia.com/gpu"]) >= 1
            # Extended resources cannot be overcommitted: requests must equal limits.
            assert str(requests.get("nvidia.com/gpu", limits["nvidia.com/gpu"])) == \
                str(limits["nvidia.com/gpu"])
            gpu_groups.append(g)
        else:
            cpu_groups.append(g)
    assert gpu_groups, f"{where}: a GPU worker group"
    assert cpu_groups, f"{where}: a CPU worker group"
    assert len(images) == 1, f"{where}: head and workers must run the same image: {images}"
    image = images.pop()
    if image.startswith("rayproject/ray:"):
        assert image.split(":", 1)[1].startswith(spec["rayVersion"]), \
            f"{where}: image {image} vs rayVersion {spec['rayVersion']}"

    # One ServiceAccount (IRSA / Pod Identity) for S3 on every Ray pod.
    sas = {t["spec"].get("serviceAccountName")
           for t in [head["template"]] + [g["template"] for g in groups]}
    assert len(sas) == 1 and None not in sas, f"{where}: serviceAccountName on every pod: {sas}"


def test_raycluster_manifest(raycluster):
    assert raycluster["apiVersion"] == "ray.io/v1"
    assert raycluster["kind"] == "RayCluster"
    assert raycluster["metadata"]["name"]
    _check_cluster_spec(raycluster["spec"], "raycluster.yaml")


def test_rayjob_manifest(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1"
    assert rayjob["kind"] == "RayJob"
    assert rayjob["metadata"]["name"]
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert spec.get("submissionMode", "K8sJobMode") in {
        "K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert isinstance(runtime_env, dict)
    wd = runtime_env.get("working_dir")
    if wd and "://" not in wd:
        # Only the submitter pod (K8sJobMode) can package and upload a local folder.
        assert spec.get("submissionMode", "K8sJobMode") == "K8sJobMode"
    assert "clusterSelector" not in spec, "the RayJob creates its own cluster"
    _check_cluster_spec(spec["rayClusterSpec"], "rayjob.yaml rayClusterSpec")


def _entrypoint_commands(rayjob: dict) -> list[tuple[str, list[str]]]:
    """(job script name, its arguments) of each command of the RayJob's entrypoint: one
    ``python jobs/X.py ...``, or several joined by ``&&`` inside one ``bash -c '...'``.

    KubeRay pastes the entrypoint into the submitter pod's shell command line, so a bare
    ``&&`` (or ``;``) would run the later commands in the submitter pod, not on the cluster."""
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert not {"&&", ";", "||", "|"} & set(argv), \
        "chain commands inside one bash -c '...', not in the submitter's shell"
    if argv[:2] == ["bash", "-c"]:
        assert len(argv) == 3, argv
        parts = [shlex.split(c) for c in argv[2].split("&&")]
    else:
        parts = [argv]
    out = []
    for cmd in parts:
        assert cmd[0] == "python", cmd
        m = re.fullmatch(r"jobs/(\w+)\.py", cmd[1])
        assert m, f"the entrypoint runs a script in jobs/: {cmd[1]}"
        out.append((m.group(1), cmd[2:]))
    return out


def _positional(args: list[str]) -> list[str]:
    out = []
    for a in args:
        if a.startswith("-"):
            break
        out.append(a)
    return out


def _flag(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def test_rayjob_entrypoint_runs_job_scripts(rayjob):
    for name, args in _entrypoint_commands(rayjob):
        assert name in JOB_SCRIPTS, f"jobs/{name}.py is not one of {sorted(JOB_SCRIPTS)}"
        assert (REPO / "jobs" / f"{name}.py").is_file(), f"jobs/{name}.py does not exist"
        # Inputs and outputs on object storage: nothing on a pod's disk outlives the cluster.
        for flag in ("--data", "--out"):
            assert flag in args, flag
            assert _flag(args, flag).startswith("s3://"), flag


def test_rayjob_image_nf_trains_on_the_vae_trained_before_it(rayjob):
    """An image NF needs a VAE (raygal refuses to start without one): the entrypoint trains
    it first and hands its output to the NF."""
    vae_outs = []
    for name, args in _entrypoint_commands(rayjob):
        pos = _positional(args)
        if name == "train" and pos == ["vae"]:
            vae_outs.append(_flag(args, "--out"))
        if name == "train" and pos == ["nf"] and _flag(args, "--inputs") != "phot":
            vae = _flag(args, "--vae")
            assert vae, "an image NF needs --vae"
            assert vae.rstrip("/") in {o.rstrip("/") for o in vae_outs} | \
                {o.rstrip("/") + "/model" for o in vae_outs}, \
                f"--vae {vae} is not the output of a VAE trained earlier in the job"


def test_rayjob_entrypoint_arguments_are_accepted(rayjob):
    """The flags each entrypoint command passes are ones the script's own --help lists."""
    for name, args in _entrypoint_commands(rayjob):
        script = REPO / "jobs" / f"{name}.py"
        assert script.is_file(), f"jobs/{name}.py does not exist"
        positional = _positional(args)
        r = subprocess.run([sys.executable, str(script), *positional, "--help"], cwd=REPO,
                           capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stderr[-2000:]
        for flag in (a.split("=", 1)[0] for a in args if a.startswith("--")):
            assert flag in r.stdout, f"jobs/{name}.py {' '.join(positional)} does not take {flag}"


@pytest.mark.parametrize("name", sorted(JOB_SCRIPTS))
def test_every_job_script_exists_and_shows_its_help(name):
    """The job scripts the cluster files name are there, import, and parse --help."""
    script = REPO / "jobs" / f"{name}.py"
    assert script.is_file(), f"jobs/{name}.py does not exist"
    positional = ["nf"] if name in ("train", "tune") else []
    r = subprocess.run([sys.executable, str(script), *positional, "--help"], cwd=REPO,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "--data" in r.stdout


def test_cluster_docs_name_only_existing_job_scripts():
    for path in (README, LAUNCHER, RAYJOB):
        for name in re.findall(r"jobs/(\w+)\.py", path.read_text()):
            assert name in JOB_SCRIPTS and (REPO / "jobs" / f"{name}.py").is_file(), \
                f"{path.name} names jobs/{name}.py"


# ----------------------------------------------------------------------------------------------
# All files
# ----------------------------------------------------------------------------------------------
SECRET_PATTERNS = [
    re.compile(r"\bA(KIA|SIA)[0-9A-Z]{16}\b"),                    # AWS access key ids
    re.compile(r"aws_secret_access_key\s*[:=]", re.IGNORECASE),
    re.compile(r"aws_access_key_id\s*[:=]", re.IGNORECASE),
    re.compile(r"AWS_(SECRET_ACCESS_KEY|ACCESS_KEY_ID|SESSION_TOKEN)\s*[:=]"),
    re.compile(r"RAY_AUTH_TOKEN\s*[:=]\s*['\"]?[A-Za-z0-9+/_-]{16,}"),  # a literal Ray token
]


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_no_credentials_in_cluster_files(path):
    text = path.read_text()
    for pat in SECRET_PATTERNS:
        m = pat.search(text)
        assert m is None, f"{path.name}: looks like a credential: {m.group(0)!r}"


def test_manifests_take_no_keys_from_env(raycluster, rayjob):
    def envs(spec):
        templates = [spec["headGroupSpec"]["template"]] + \
            [g["template"] for g in spec["workerGroupSpecs"]]
        for t in templates:
            for c in t["spec"]["containers"]:
                yield from c.get("env", [])

    for spec in (raycluster["spec"], rayjob["spec"]["rayClusterSpec"]):
        for e in envs(spec):
            assert e["name"] not in {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                     "AWS_SESSION_TOKEN"}, e["name"]


def test_readme_covers_bring_up_submission_and_security():
    text = README.read_text()
    for needle in ("aws-gpu.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml",
                   "ray up", "ray dashboard cluster/aws-gpu.yaml", "ray down",
                   "ray job submit --address http://127.0.0.1:8265 --working-dir .",
                   "kubectl port-forward", "RAY_AUTH_MODE=token", "IRSA",
                   "idle", "min_workers", "num_gpus=1", "all interfaces"):
        assert needle in text, f"cluster/README.md should cover {needle!r}"
