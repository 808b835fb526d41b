"""`job.args` may name the job's folders by placeholder; an unknown one is refused when the bundle is read."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from flopex.cli.main import cli
from marketplace.errors import BundleError
from marketplace.protocol.bundle import ARG_PLACEHOLDERS, expand_args, load_bundle, parse_job_toml
from worker.sandbox.runner import Sandbox
from worker.sandbox.space import JobSpace

FOLDERS = {
    "input_dir": "/job/input",
    "output_dir": "/job/output",
    "checkpoint_dir": "/job/checkpoints",
    "work_dir": "/w",
}


def _toml(args: str) -> str:
    return f'[job]\nentrypoint = "main.py"\nargs = {args}\n[market]\nmax_price = "1"\n'


def test_placeholders__resolve_to_the_folders_and_leave_other_braces_alone() -> None:
    spec = parse_job_toml(
        _toml("""["--save", "{output_dir}/model.pt", "--data={input_dir}", "{checkpoint_dir}", "{work_dir}",
        '{"lr": 0.1}', "{{output_dir}}", "{ output_dir }", "{}", "plain"]""")
    )
    assert expand_args(spec.job.args, FOLDERS) == (
        "--save",
        "/job/output/model.pt",
        "--data=/job/input",
        "/job/checkpoints",
        "/w",
        '{"lr": 0.1}',
        "{output_dir}",
        "{ output_dir }",
        "{}",
        "plain",
    )


def test_an_unknown_placeholder__is_one_line_naming_the_argument_and_the_known_names() -> None:
    with pytest.raises(BundleError) as caught:
        parse_job_toml(_toml('["--out", "{outptu_dir}/x"]'))
    message = str(caught.value)
    assert message.startswith("job.args[1]: unknown placeholder {outptu_dir} in '{outptu_dir}/x'; known: ")
    assert all(f"{{{name}}}" in message for name in ARG_PLACEHOLDERS) and "\n" not in message
    assert "{{outptu_dir}}" in message  # how to write it literally
    parse_job_toml(_toml('["{{outptu_dir}}"]'))  # escaped: accepted
    with pytest.raises(BundleError, match=r"unknown placeholder \{seed\}"):
        expand_args(("{seed}",), FOLDERS)


def test_the_sandbox_names_every_placeholder_and_no_other(tmp_path: Path) -> None:
    space = JobSpace(tmp_path, "dir", capacity_bytes=1 << 20, uid=None)
    space.bundle = tmp_path / "bundle"
    bare = Sandbox(bwrap=str(tmp_path / "no-bwrap"), allow_unsandboxed=True, use_cgroups=False)
    try:
        outside = bare.job_folders(space)
    finally:
        bare.close()
    assert outside == {
        "input_dir": str(space.bundle),
        "output_dir": str(space.output),
        "checkpoint_dir": str(space.checkpoints),
        "work_dir": str(space.work),
        "data_dir": str(space.data_dir()),
    }
    assert set(outside) == set(ARG_PLACEHOLDERS)


def test_job_submit__refuses_an_unknown_placeholder_before_touching_the_chain(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("print(1)\n")
    (tmp_path / "job.toml").write_text(_toml('["{output}"]'))
    with pytest.raises(BundleError):
        load_bundle(tmp_path)
    result = CliRunner().invoke(
        cli, ["job", "submit", str(tmp_path), "--dev", "1", "--deployment", str(tmp_path / "none.json")]
    )
    assert result.exit_code == 1
    assert result.output.startswith("error: job.args[0]: unknown placeholder {output} in '{output}'; known: ")
    assert result.output.count("\n") == 1
