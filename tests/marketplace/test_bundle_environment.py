"""The ``[environment]`` table and the ``python``/``torch`` ranges of job.toml: parsed, checked, one line each."""

from __future__ import annotations

from pathlib import Path

import pytest

from marketplace.errors import BundleError
from marketplace.protocol.bundle import load_bundle, pack_bundle, parse_job_toml, unpack_bundle
from marketplace.protocol.environment import serves

BASE = '[job]\nentrypoint = "main.py"\n[market]\nmax_price = "1"\n'


def _bundle(tmp_path: Path, extra: str, files: dict[str, str]) -> Path:
    root = tmp_path / "b"
    root.mkdir()
    (root / "job.toml").write_text(BASE + extra)
    (root / "main.py").write_text("print(1)\n")
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_requirements_and_ranges_are_read(tmp_path: Path) -> None:
    root = _bundle(
        tmp_path,
        '[environment]\nrequirements = "deps/requirements.txt"\n[resources]\npython = ">=3.10"\ntorch = ">=2.4,<3"\n',
        {
            "deps/requirements.txt": "# a comment\nsix==1.16.0  # inline\nattrs[tests]>=23 ; python_version >= '3.8'\n"
            "torch>=2.0 --hash=sha256:00\n"
        },
    )
    bundle = load_bundle(root)
    assert bundle.spec.environment.requirements == "deps/requirements.txt"
    assert bundle.spec.environment.files == ("deps/requirements.txt",)
    assert bundle.spec.resources.python == ">=3.10"
    assert bundle.torch_ranges == (">=2.4,<3", ">=2.0")
    # The archive round trip keeps it all.
    again = unpack_bundle(_archive(root, tmp_path), tmp_path / "unpacked", max_bytes=1 << 20)
    assert again.spec == bundle.spec and again.torch_ranges == bundle.torch_ranges


def _archive(root: Path, tmp_path: Path) -> Path:
    path = tmp_path / "b.tar.gz"
    pack_bundle(root, path)
    return path


def test_no_environment_by_default() -> None:
    spec = parse_job_toml(BASE)
    assert not spec.environment.declared
    assert spec.resources.python == "" and spec.resources.torch == ""


def test_lock_defaults_its_project_beside_it(tmp_path: Path) -> None:
    lock = 'version = 1\nrequires-python = ">=3.11"\n[[package]]\nname = "torch"\nversion = "2.13.0"\n'
    root = _bundle(
        tmp_path,
        '[environment]\nlock = "env/uv.lock"\n',
        {"env/uv.lock": lock, "env/pyproject.toml": '[project]\nname = "x"\nversion = "0"\n'},
    )
    bundle = load_bundle(root)
    assert bundle.spec.environment.project == "env/pyproject.toml"
    assert bundle.spec.environment.files == ("env/pyproject.toml", "env/uv.lock")
    assert bundle.torch_ranges == ("==2.13.0",)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[environment]\nrequirement = "r.txt"\n', "[environment]: unknown key(s) requirement"),
        ('[environment]\nrequirements = "missing.txt"\n', "environment.requirements: 'missing.txt' is not a file"),
        ('[environment]\nrequirements = "../r.txt"\n', "environment.requirements: path escapes the bundle"),
        ('[environment]\nrequirements = "/etc/passwd"\n', "environment.requirements: absolute path not allowed"),
        ("[environment]\nrequirements = 3\n", "environment.requirements: expected a path in the bundle"),
        ('[environment]\nrequirements = "r.txt"\nlock = "uv.lock"\n', "give either requirements or lock"),
        ('[environment]\nproject = "pyproject.toml"\n', "environment.project: only with environment.lock"),
        ('[resources]\ntorch = "2.x"\n', "resources.torch: not a version range: '2.x'"),
        ("[resources]\npython = 3.11\n", "resources.python: expected a version range"),
        ('[resources]\ncuda = "12"\n', "[resources]: unknown key(s) cuda"),
    ],
)
def test_bad_declarations_are_one_line(tmp_path: Path, extra: str, message: str) -> None:
    root = _bundle(tmp_path, extra, {"r.txt": "six\n"})
    with pytest.raises(BundleError) as info:
        load_bundle(root)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--index-url https://evil.example/simple", "option '--index-url' is not allowed"),
        ("-e .", "option '-e' is not allowed"),
        ("-r other.txt", "option '-r' is not allowed"),
        ("six @ https://example.org/six.whl", "six @ URL is not allowed"),
        ("six==", "requirements.txt:2: not a requirement"),
    ],
)
def test_requirement_lines_that_choose_their_source_are_refused(tmp_path: Path, line: str, message: str) -> None:
    root = _bundle(
        tmp_path, '[environment]\nrequirements = "requirements.txt"\n', {"requirements.txt": f"six\n{line}\n"}
    )
    with pytest.raises(BundleError, match=r"environment\.requirements") as info:
        load_bundle(root)
    assert message in str(info.value)


def test_a_lock_that_is_not_one_is_refused(tmp_path: Path) -> None:
    root = _bundle(
        tmp_path,
        '[environment]\nlock = "uv.lock"\n',
        {"uv.lock": "this is = not [ toml", "pyproject.toml": '[project]\nname = "x"\n'},
    )
    with pytest.raises(BundleError, match=r"environment\.lock uv\.lock: not a uv lock file"):
        load_bundle(root)
    (root / "uv.lock").write_text("version = 1\n")
    (root / "pyproject.toml").write_text("[tool.x]\n")
    with pytest.raises(BundleError, match=r"environment.project pyproject.toml: no \[project\] table"):
        load_bundle(root)


def test_serves_compares_versions_with_local_labels() -> None:
    assert serves("3.11.7", "2.13.0+cpu", ">=3.10", (">=2.4", "==2.13.0")) is None
    assert serves("3.11.7", "2.13.0+cu128", "", ("==2.13.*",)) is None
    assert serves("3.11.7", "2.13.0", "<3.11", ()) == "needs Python <3.11; the provider has 3.11.7"
    assert serves("3.11.7", "2.13.0", "", ("<2.5",)) == "needs torch <2.5; the provider has 2.13.0"
    assert serves("3.11.7", "", "", (">=2",)) == "needs torch >=2; the provider does not say which it has"
    assert serves("3.11.7", "", "", ()) is None
