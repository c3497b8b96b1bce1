"""Profile loading and validation: bundled names, paths and every guard."""

from pathlib import Path

import pytest

from cluster import (
    AddressProfile,
    KubernetesProfile,
    LocalGPUProfile,
    LocalProfile,
    ProfileError,
    SlurmProfile,
    bundled_profiles,
    load_profile,
    parse_profile,
)

SLURM_FIELDS = {"kind": "slurm", "cores_per_job": 16, "memory_per_job": "120GiB"}
KUBERNETES_FIELDS = {"kind": "kubernetes", "image": "example/fleximo:1", "memory_per_worker": "60Gi"}


@pytest.mark.parametrize(
    ("name", "profile_class"),
    [
        ("local", LocalProfile),
        ("local-gpu", LocalGPUProfile),
        ("slurm-gpu", SlurmProfile),
        ("kubernetes-gpu", KubernetesProfile),
        ("address", AddressProfile),
    ],
)
def test_bundled_profile_loads(name, profile_class):
    profile = load_profile(name)

    assert isinstance(profile, profile_class)
    assert profile.name == name


def test_bundled_profiles_listed():
    assert bundled_profiles() == ["address", "kubernetes-gpu", "local", "local-gpu", "slurm-gpu"]


def test_bundled_gpu_profiles_require_gpu():
    assert load_profile("local-gpu").requires_gpu
    assert load_profile("slurm-gpu").requires_gpu
    assert load_profile("kubernetes-gpu").requires_gpu
    assert not load_profile("local").requires_gpu
    assert not load_profile("address").requires_gpu


def test_profile_from_path(tmp_path):
    path = tmp_path / "big-node.yaml"
    path.write_text("kind: local\nn_workers: 3\nmemory_limit: 2GiB\n")

    profile = load_profile(path)

    assert isinstance(profile, LocalProfile)
    assert profile.name == "big-node"
    assert profile.n_workers == 3
    assert profile.memory_limit == 2 * 2**30


def test_profile_from_path_string(tmp_path):
    path = tmp_path / "mine.yml"
    path.write_text("kind: address\naddress: tcp://10.0.0.5:8786\nname: site-scheduler\n")

    profile = load_profile(str(path))

    assert profile.address == "tcp://10.0.0.5:8786"
    assert profile.name == "site-scheduler"


def test_unknown_name_lists_bundled():
    with pytest.raises(ProfileError, match=r"'lokal' not found; use one of the bundled names \['address'"):
        load_profile("lokal")


def test_missing_file_rejected(tmp_path):
    with pytest.raises(ProfileError, match=r"file '.*absent\.yaml' not found"):
        load_profile(tmp_path / "absent.yaml")


def test_invalid_yaml_rejected(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("kind: local\nn_workers: [1\n")

    with pytest.raises(ProfileError, match="is not valid YAML"):
        load_profile(path)


def test_non_mapping_rejected(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- kind: local\n")

    with pytest.raises(ProfileError, match="contains a list, expected a mapping with a 'kind' key"):
        load_profile(path)


def test_unknown_kind_names_choices():
    with pytest.raises(ProfileError, match=r"kind = 'pbs'.*set kind to one of local, local-gpu, slurm"):
        parse_profile({"kind": "pbs"})


def test_misspelt_field_named():
    with pytest.raises(ProfileError, match=r"local\.n_worker = 4: .*remove it or check its spelling"):
        parse_profile({"kind": "local", "n_worker": 4})


def test_missing_field_named():
    with pytest.raises(ProfileError, match=r"slurm\.memory_per_job = .*Field required; add it"):
        parse_profile({"kind": "slurm", "cores_per_job": 8})


@pytest.mark.parametrize(
    ("text", "size_bytes"),
    [("16GiB", 16 * 2**30), ("64 GB", 64 * 10**9), ("32Gi", 32 * 2**30), (1024, 1024)],
)
def test_byte_sizes_parsed(text, size_bytes):
    profile = parse_profile({**SLURM_FIELDS, "memory_per_job": text})

    assert profile.memory_per_job == size_bytes


def test_bad_byte_size_rejected():
    with pytest.raises(ProfileError, match=r"memory_per_job = 'lots'.*not a byte size.*'16GiB'"):
        parse_profile({**SLURM_FIELDS, "memory_per_job": "lots"})


def test_zero_workers_rejected():
    with pytest.raises(ProfileError, match=r"local\.n_workers = 0: Input should be greater than 0"):
        parse_profile({"kind": "local", "n_workers": 0})


@pytest.mark.parametrize("directive", ["--mem=64G", "--mem-per-gpu 40G", "--mem-per-cpu=4G"])
def test_slurm_second_memory_directive_rejected(directive):
    with pytest.raises(ProfileError, match="already requests memory_per_job with --mem"):
        parse_profile({**SLURM_FIELDS, "job_extra_directives": [directive]})


@pytest.mark.parametrize("directive", ["--gres=gpu:4", "--gpus=2", "--cpus-per-task=4"])
def test_slurm_generated_directive_rejected(directive):
    with pytest.raises(ProfileError, match="which the profile generates"):
        parse_profile({**SLURM_FIELDS, "job_extra_directives": [directive]})


def test_slurm_other_directive_kept():
    profile = parse_profile({**SLURM_FIELDS, "job_extra_directives": ["--qos=high", "--constraint=a100"]})

    assert profile.job_extra_directives == ["--qos=high", "--constraint=a100"]


def test_slurm_max_below_min_rejected():
    with pytest.raises(ProfileError, match="max_jobs=2 is below min_jobs=3"):
        parse_profile({**SLURM_FIELDS, "min_jobs": 3, "max_jobs": 2})


def test_slurm_processes_must_match_gpus():
    with pytest.raises(ProfileError, match="processes_per_job=4 differs from gpus_per_job=2"):
        parse_profile({**SLURM_FIELDS, "gpus_per_job": 2, "processes_per_job": 4})


def test_slurm_too_few_cores_rejected():
    with pytest.raises(ProfileError, match="cores_per_job=2 is fewer than the 4 worker processes"):
        parse_profile({**SLURM_FIELDS, "cores_per_job": 2, "gpus_per_job": 4})


@pytest.mark.parametrize("walltime", ["2h", "25:00:00:00", ""])
def test_slurm_bad_walltime_rejected(walltime):
    with pytest.raises(ProfileError, match="is not a SLURM time limit"):
        parse_profile({**SLURM_FIELDS, "walltime": walltime})


@pytest.mark.parametrize(("gpus", "processes"), [(0, 1), (1, 1), (4, 4)])
def test_slurm_worker_processes(gpus, processes):
    profile = parse_profile({**SLURM_FIELDS, "gpus_per_job": gpus})

    assert profile.worker_processes == processes


def test_kubernetes_bad_name_rejected():
    with pytest.raises(ProfileError, match="cluster_name 'Fleximo_Run' is not a valid Kubernetes name"):
        parse_profile({**KUBERNETES_FIELDS, "cluster_name": "Fleximo_Run"})


def test_kubernetes_max_below_min_rejected():
    with pytest.raises(ProfileError, match="max_workers=1 is below min_workers=2"):
        parse_profile({**KUBERNETES_FIELDS, "min_workers": 2, "max_workers": 1})


@pytest.mark.parametrize(("gpus", "threads"), [(1, 2), (0, 8)])
def test_kubernetes_default_threads(gpus, threads):
    profile = parse_profile({**KUBERNETES_FIELDS, "gpus_per_worker": gpus, "cores_per_worker": 8})

    assert profile.worker_threads == threads


def test_address_needs_scheme():
    with pytest.raises(ProfileError, match=r"address 'host:8786' has no scheduler protocol.*'tcp://host:8786'"):
        parse_profile({"kind": "address", "address": "host:8786"})


@pytest.mark.parametrize(
    "fields",
    [{}, {"address": "tcp://a:8786", "gateway": {"address": "https://gateway.example.org"}}],
)
def test_address_needs_exactly_one_target(fields):
    with pytest.raises(ProfileError, match="set exactly one of address .* and gateway"):
        parse_profile({"kind": "address", **fields})


def test_profiles_are_frozen():
    profile = load_profile("local")

    with pytest.raises(Exception, match="frozen"):
        profile.n_workers = 5


def test_bundled_profile_files_exist():
    for name in bundled_profiles():
        assert (Path(__file__).parents[2] / "cluster" / "profiles" / f"{name}.yaml").is_file()


def test_missing_kind_named():
    with pytest.raises(ProfileError, match=r"kind = None: invalid or missing profile kind"):
        parse_profile({"n_workers": 2})


def test_environment_numbers_become_text(tmp_path):
    path = tmp_path / "env.yaml"
    path.write_text("kind: local\nenvironment:\n  GDAL_CACHEMAX: 512\n  AWS_REGION: eu-central-1\n")

    profile = load_profile(path)

    assert profile.environment == {"GDAL_CACHEMAX": "512", "AWS_REGION": "eu-central-1"}


def test_environment_boolean_rejected(tmp_path):
    path = tmp_path / "env.yaml"
    path.write_text("kind: local\nenvironment:\n  GDAL_HTTP_MULTIRANGE: YES\n")

    with pytest.raises(ProfileError, match=r"GDAL_HTTP_MULTIRANGE = True: .*YAML boolean; quote it"):
        load_profile(path)


def test_bundled_file_name_resolves(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    profile = load_profile("slurm-gpu.yaml")

    assert isinstance(profile, SlurmProfile)
    assert profile.name == "slurm-gpu"


def test_local_file_wins_over_bundled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local.yaml").write_text("kind: local\nn_workers: 7\n")

    assert load_profile("local.yaml").n_workers == 7
