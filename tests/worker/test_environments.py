"""The provider's environment cache: real uv builds in the bubblewrap sandbox from a local wheelhouse.

Every package here is a wheel written by the test (tests/worker/envkit.py) and served as a
``--find-links`` folder with no package index, so nothing touches the network.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from marketplace.protocol.bundle import Bundle, load_bundle
from tests.worker.workerkit import HAVE_BWRAP
from worker.node.environments import (
    Environment,
    EnvironmentBuildError,
    EnvironmentCache,
    EnvironmentSettings,
    environment_key,
)
from worker.sandbox.runner import Limits, Sandbox, SandboxRequest
from worker.testing.wheels import make_wheel

pytestmark = [pytest.mark.bwrap, pytest.mark.slow]

PROBE = """\
import sys, torch, flopexdemo
print(flopexdemo.VALUE, torch.__version__, sys.prefix)
"""


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    if not HAVE_BWRAP:
        pytest.skip("bubblewrap is not available")
    made = Sandbox()
    yield made
    made.close()


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheelhouse")
    make_wheel(folder, "flopexdemo", "1.0", "VALUE = 42\n")
    make_wheel(folder, "flopexdemo", "2.0", "VALUE = 2\n")
    for i in range(3):
        make_wheel(folder, f"padded{i}", "1.0", f"N = {i}\n", pad_bytes=300_000)
    return folder


def _settings(root: Path, wheelhouse: Path, **kw: object) -> EnvironmentSettings:
    return EnvironmentSettings(root, package_index=None, find_links=(wheelhouse,), **kw)  # type: ignore[arg-type]


def _bundle(folder: Path, requirements: str, resources: str = "") -> Bundle:
    folder.mkdir(parents=True)
    (folder / "job.toml").write_text(
        '[job]\nentrypoint = "main.py"\n[environment]\nrequirements = "requirements.txt"\n'
        f'[resources]\ndevice = "cpu"\n{resources}[market]\nmax_price = "1"\n'
    )
    (folder / "main.py").write_text(PROBE)
    (folder / "requirements.txt").write_text(requirements)
    return load_bundle(folder)


def _run_job(sandbox: Sandbox, bundle: Bundle, env: Environment) -> str:
    """Run the bundle's main.py with the environment's interpreter in the job sandbox; its stdout."""
    limits = Limits(timeout_s=120)
    space = sandbox.create_space(limits, bundle.root)
    try:
        req = SandboxRequest(name="envtest", space=space, entrypoint="main.py", limits=limits, python=env.python)
        proc = sandbox.start(req)
        with proc.stdout, proc.stderr:
            out = proc.stdout.read().decode()
            err = proc.stderr.read().decode()
        outcome = proc.wait()
        assert outcome.exit_code == 0, err
        return out
    finally:
        space.release()


def test_key_names_files_python_and_torch(tmp_path: Path) -> None:
    a = _bundle(tmp_path / "a", "flopexdemo==1.0\n")
    section = a.spec.environment
    files = {"requirements.txt": b"flopexdemo==1.0\n"}
    key = environment_key(section, files, "3.11.7", "2.13.0+cpu", only_binary=True)
    assert key == environment_key(section, dict(files), "3.11.7", "2.13.0+cpu", only_binary=True)
    others = {
        environment_key(section, {"requirements.txt": b"flopexdemo==2.0\n"}, "3.11.7", "2.13.0+cpu", only_binary=True),
        environment_key(section, files, "3.12.1", "2.13.0+cpu", only_binary=True),
        environment_key(section, files, "3.11.7", "2.13.0+cu128", only_binary=True),
        environment_key(section, files, "3.11.7", "2.13.0+cpu", only_binary=False),
    }
    assert key not in others and len(others) == 4


def test_built_once_then_reused_and_the_job_sees_the_package_and_the_providers_torch(
    sandbox: Sandbox, wheelhouse: Path, tmp_path: Path
) -> None:
    import torch

    cache = EnvironmentCache(_settings(tmp_path / "cache", wheelhouse), sandbox)
    bundle = _bundle(tmp_path / "b", "flopexdemo==1.0\n")
    with cache.use(bundle) as first:
        assert first is not None and not first.cached and first.build_s > 0
        out = _run_job(sandbox, bundle, first)
    value, torch_version, prefix = out.split()
    assert value == "42"
    assert torch_version == torch.__version__  # the provider's own torch, layered under the env
    assert prefix == str(first.path)
    with cache.use(bundle) as second:
        assert second is not None and second.cached and second.build_s == 0.0
        assert second.path == first.path
    # The same declaration in another bundle (another hash) maps to the same environment.
    other = _bundle(tmp_path / "c", "flopexdemo==1.0\n", "timeout_s = 99\n")
    with cache.use(other) as third:
        assert third is not None and third.cached and third.key == first.key


def test_a_torch_pin_the_provider_meets_installs_no_torch(sandbox: Sandbox, wheelhouse: Path, tmp_path: Path) -> None:
    import torch

    base = torch.__version__.split("+")[0]
    cache = EnvironmentCache(_settings(tmp_path / "cache", wheelhouse), sandbox)
    bundle = _bundle(tmp_path / "b", f"torch=={base}\nflopexdemo==2.0\n")
    with cache.use(bundle) as env:
        assert env is not None
        site = next(env.path.glob("lib/python*/site-packages"))
        assert not (site / "torch").exists()
        out = _run_job(sandbox, bundle, env)
    assert out.split()[:2] == ["2", torch.__version__]


def test_a_torch_pin_the_provider_cannot_meet_is_refused_before_any_build(
    sandbox: Sandbox, wheelhouse: Path, tmp_path: Path
) -> None:
    cache = EnvironmentCache(_settings(tmp_path / "cache", wheelhouse), sandbox)
    bundle = _bundle(tmp_path / "b", "torch<2\nflopexdemo\n")
    with pytest.raises(EnvironmentBuildError) as info:
        with cache.use(bundle):
            pass
    assert "needs torch <2; the provider has" in info.value.message
    assert list(cache.envs.iterdir()) == [] and list(cache.building.iterdir()) == []
    python_range = _bundle(tmp_path / "p", "flopexdemo\n", 'python = "<3.0"\n')
    with pytest.raises(EnvironmentBuildError, match=r"needs Python <3\.0"):
        with cache.use(python_range):
            pass


def test_a_failed_build_is_one_line_and_leaves_nothing(sandbox: Sandbox, wheelhouse: Path, tmp_path: Path) -> None:
    cache = EnvironmentCache(_settings(tmp_path / "cache", wheelhouse), sandbox)
    good = _bundle(tmp_path / "good", "flopexdemo==1.0\n")
    with cache.use(good) as env:
        assert env is not None
    bad = _bundle(tmp_path / "bad", "no-such-package-anywhere==1.0\n")
    with pytest.raises(EnvironmentBuildError) as info:
        with cache.use(bad):
            pass
    assert info.value.message.startswith("environment: uv could not install the packages:")
    assert "no-such-package-anywhere" in info.value.message
    assert "\n" not in info.value.message
    assert [p.name for p in cache.envs.iterdir()] == [env.key]  # the good one is untouched
    assert list(cache.building.iterdir()) == []
    with cache.use(good) as again:
        assert again is not None and again.cached


def test_an_environment_over_the_size_limit_is_refused(sandbox: Sandbox, wheelhouse: Path, tmp_path: Path) -> None:
    cache = EnvironmentCache(_settings(tmp_path / "cache", wheelhouse, max_env_bytes=200_000), sandbox)
    bundle = _bundle(tmp_path / "b", "padded0\n")
    with pytest.raises(EnvironmentBuildError, match="more than this provider's limit of 200000"):
        with cache.use(bundle):
            pass
    assert list(cache.envs.iterdir()) == [] and list(cache.building.iterdir()) == []


def test_least_recently_used_is_evicted_never_one_in_use(sandbox: Sandbox, wheelhouse: Path, tmp_path: Path) -> None:
    # Each environment is a little over 300 kB; the cap holds two of them.
    cache = EnvironmentCache(_settings(tmp_path / "cache", wheelhouse, max_cache_bytes=900_000), sandbox)
    bundles = [_bundle(tmp_path / f"b{i}", f"padded{i}\n") for i in range(3)]
    keys = []
    with cache.use(bundles[0]) as held:  # in use all along: never evicted
        assert held is not None
        keys.append(held.key)
        for bundle in bundles[1:]:
            with cache.use(bundle) as env:
                assert env is not None
                keys.append(env.key)
        cache.evict()
        present = {p.name for p in cache.envs.iterdir()}
        assert keys[0] in present
        assert keys[1] not in present  # the least recently used one that was free
        assert keys[2] in present
    with cache.use(bundles[1]) as rebuilt:
        assert rebuilt is not None and not rebuilt.cached
    cache.evict()
    assert sum(size for _key, size, _used in cache.entries()) <= 900_000


def test_concurrent_jobs_build_once(sandbox: Sandbox, wheelhouse: Path, tmp_path: Path) -> None:
    cache = EnvironmentCache(_settings(tmp_path / "cache", wheelhouse), sandbox)
    bundle = _bundle(tmp_path / "b", "flopexdemo==2.0\n")
    got: list[Environment] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def one() -> None:
        try:
            start.wait()
            with cache.use(bundle) as env:
                assert env is not None and (env.path / "bin" / "python").exists()
                got.append(env)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert len(got) == 4
    assert sum(not env.cached for env in got) == 1
    assert len({env.path for env in got}) == 1


def test_a_uv_lock_is_installed_as_locked(sandbox: Sandbox, wheelhouse: Path, tmp_path: Path) -> None:
    import subprocess

    from uv import find_uv_bin

    folder = tmp_path / "b"
    (folder / "env").mkdir(parents=True)
    (folder / "env" / "pyproject.toml").write_text(
        '[project]\nname = "job"\nversion = "0"\nrequires-python = ">=3.10"\ndependencies = ["flopexdemo<2"]\n'
    )
    # The requester's side: `uv lock` against the same wheelhouse, offline.
    subprocess.run(
        [find_uv_bin(), "lock", "--no-index", "--find-links", str(wheelhouse), "--project", str(folder / "env")],
        check=True,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "UV_CACHE_DIR": str(tmp_path / "uvcache")},
    )
    (folder / "job.toml").write_text(
        '[job]\nentrypoint = "main.py"\n[environment]\nlock = "env/uv.lock"\n'
        '[resources]\ndevice = "cpu"\n[market]\nmax_price = "1"\n'
    )
    (folder / "main.py").write_text(PROBE)
    bundle = load_bundle(folder)
    assert bundle.spec.environment.files == ("env/pyproject.toml", "env/uv.lock")
    cache = EnvironmentCache(_settings(tmp_path / "cache", wheelhouse), sandbox)
    with cache.use(bundle) as env:
        assert env is not None and not env.cached
        out = _run_job(sandbox, bundle, env)
    assert out.split()[0] == "42"  # flopexdemo 1.0, as locked


def test_a_package_with_only_a_source_distribution__is_refused_no_build_script_runs(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    import io
    import tarfile

    wheelhouse = tmp_path / "sdists"
    wheelhouse.mkdir(mode=0o755)
    marker = tmp_path / "setup-ran"
    setup = f"open({str(marker)!r}, 'w').write('ran')\nfrom setuptools import setup\n"
    setup += "setup(name='sdistonly', version='1.0')\n"
    with tarfile.open(wheelhouse / "sdistonly-1.0.tar.gz", "w:gz") as tar:
        for name, text in {
            "sdistonly-1.0/setup.py": setup,
            "sdistonly-1.0/PKG-INFO": "Metadata-Version: 2.1\nName: sdistonly\nVersion: 1.0\n",
        }.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (wheelhouse / "sdistonly-1.0.tar.gz").chmod(0o644)
    cache = EnvironmentCache(_settings(tmp_path / "cache", wheelhouse), sandbox)
    with pytest.raises(EnvironmentBuildError, match="uv could not install the packages") as info:
        with cache.use(_bundle(tmp_path / "b", "sdistonly==1.0\n")):
            pass
    assert "sdistonly" in info.value.message
    assert not marker.exists()
    assert list(cache.envs.iterdir()) == []


def test_a_real_package_from_pypi__when_pypi_is_reachable(sandbox: Sandbox, tmp_path: Path) -> None:
    """The example's own requirements from the real index, through the sandbox's network (skipped offline)."""
    import shutil

    from tests.verification.chainkit import ROOT

    folder = tmp_path / "b"
    shutil.copytree(ROOT / "examples" / "extra_package", folder)
    cache = EnvironmentCache(EnvironmentSettings(tmp_path / "cache"), sandbox)
    try:
        with cache.use(load_bundle(folder)) as env:
            assert env is not None
            site = next(env.path.glob("lib/python*/site-packages"))
            assert (site / "tabulate").is_dir()
            assert not (site / "torch").exists()
    except EnvironmentBuildError as exc:
        offline = ("connect", "dns", "resolve", "network", "timed out", "certificate", "tls")
        if any(word in exc.message.lower() for word in offline):
            pytest.skip(f"PyPI is not reachable from here: {exc.message[:160]}")
        raise


def test_without_bubblewrap__builds_only_where_unsandboxed_jobs_are_allowed(wheelhouse: Path, tmp_path: Path) -> None:
    import subprocess

    bundle = _bundle(tmp_path / "b", "flopexdemo==2.0\n")
    refusing = Sandbox(bwrap=str(tmp_path / "no-bwrap"))
    try:
        cache = EnvironmentCache(_settings(tmp_path / "refusing", wheelhouse), refusing)
        with pytest.raises(EnvironmentBuildError, match="bubblewrap is not available here"):
            with cache.use(bundle):
                pass
    finally:
        refusing.close()
    trusting = Sandbox(bwrap=str(tmp_path / "no-bwrap"), allow_unsandboxed=True)
    try:
        cache = EnvironmentCache(_settings(tmp_path / "trusting", wheelhouse), trusting)
        with cache.use(bundle) as env:
            assert env is not None and not env.cached
            done = subprocess.run(
                [str(env.python), "-c", "import flopexdemo; print(flopexdemo.VALUE)"],
                capture_output=True,
                text=True,
                check=True,
            )
        assert done.stdout.strip() == "2"
    finally:
        trusting.close()
