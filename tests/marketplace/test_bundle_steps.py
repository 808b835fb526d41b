"""`[job] command` and `[[job.steps]]`: what they may run, how they are refused in one line, and the
steps they launch (torchrun on every device when `gpus` is above 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from marketplace.errors import BundleError
from marketplace.protocol.bundle import (
    MAX_STEPS,
    JobSpec,
    LaunchStep,
    launch_steps,
    launcher_steps,
    load_bundle,
    parse_job_toml,
)

FOLDERS = {"input_dir": "/job/input", "output_dir": "/job/output", "checkpoint_dir": "/c", "work_dir": "/job/work"}
TAIL = '[market]\nmax_price = "1"\n'


def _spec(job: str, gpus: int = 1) -> JobSpec:
    return parse_job_toml(f'[job]\n{job}\n[resources]\ndevice = "cpu"\ngpus = {gpus}\n{TAIL}')


def test_command__runs_python_with_placeholders_expanded() -> None:
    spec = parse_job_toml(f'[job]\ncommand = ["python", "prep.py", "{{output_dir}}", "{{{{x}}}}"]\n{TAIL}')
    assert spec.job.entrypoint == "" and [s.name for s in spec.job.steps] == ["main"]
    assert launch_steps(spec, FOLDERS) == (LaunchStep("main", ("python", "prep.py", "/job/output", "{x}"), 1),)
    # A command always goes through the launcher; a plain one-device entrypoint job does not.
    assert launcher_steps(spec, FOLDERS) == launch_steps(spec, FOLDERS)
    plain = parse_job_toml(f'[job]\nentrypoint = "main.py"\nargs = ["{{work_dir}}"]\n{TAIL}')
    assert launcher_steps(plain, FOLDERS) == ()
    assert launch_steps(plain, FOLDERS) == (LaunchStep("main", ("python", "main.py", "/job/work"), 1),)


def test_a_py_file_first__runs_with_the_jobs_python() -> None:
    spec = _spec('command = ["tools/prep.py", "--n", "3"]')
    assert spec.job.steps[0].command == ("python", "tools/prep.py", "--n", "3")


def test_steps__keep_their_order_names_and_torchrun_choice() -> None:
    spec = _spec(
        """
[[job.steps]]
name = "data"
command = ["python", "make_data.py", "{work_dir}/d.pt"]
torchrun = false
[[job.steps]]
name = "train"
command = ["python", "-u", "train.py"]
[[job.steps]]
command = ["python", "-m", "json.tool", "{output_dir}/m.json"]
""",
        gpus=4,
    )
    assert launch_steps(spec, FOLDERS) == (
        LaunchStep("data", ("python", "make_data.py", "/job/work/d.pt"), 1),
        LaunchStep("train", ("python", "-u", "train.py"), 4),
        LaunchStep("step3", ("python", "-m", "json.tool", "/job/output/m.json"), 4),
    )


def test_gpus_above_one__launch_an_entrypoint_with_torchrun_unless_told_not_to() -> None:
    spec = _spec('entrypoint = "ddp.py"', gpus=2)
    assert launcher_steps(spec, FOLDERS) == (LaunchStep("main", ("python", "ddp.py"), 2),)
    single = _spec('entrypoint = "dp.py"\ntorchrun = false', gpus=2)
    assert launcher_steps(single, FOLDERS) == ()


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ('command = ["bash", "-c", "curl x"]', "job.command: cannot run 'bash': a command starts with python"),
        ('command = ["/usr/bin/python3", "x.py"]', "job.command: cannot run '/usr/bin/python3'"),
        ('command = ["../up.py"]', "job.command: path escapes the bundle: '../up.py'"),
        ("command = []", "job.command: expected a non-empty list of strings"),
        ('command = "python x.py"', "job.command: expected a non-empty list of strings"),
        ('command = ["python", "x.py", "{home}"]', "unknown placeholder {home}"),
        ('entrypoint = "a.py"\ncommand = ["python", "a.py"]', "[job]: give one of entrypoint, command or steps"),
        ('command = ["python", "a.py"]\nargs = ["1"]', "job.args: only with job.entrypoint"),
        ('steps = ["python a.py"]', "job.steps: expected [[job.steps]] tables"),
        ('[[job.steps]]\nname = "a"', "job.steps[0].command: required"),
        ('[[job.steps]]\ncommand = ["python", "a.py"]\nshell = true', "job.steps[0]: unknown key(s) shell"),
        (
            '[[job.steps]]\nname = "a"\ncommand = ["python", "a.py"]\n[[job.steps]]\nname = "a"\ncommand = ["python"]',
            "job.steps[1].name: 'a' names two steps",
        ),
        ('[[job.steps]]\nname = "a b"\ncommand = ["python", "a.py"]', "job.steps[0].name: letters, digits"),
        ('[[job.steps]]\ncommand = ["python", "a.py"]\ntorchrun = "yes"', "job.steps[0].torchrun: expected true or"),
        ('entrypoint = "a.py"\ntorchrun = true', "job.torchrun: torchrun needs resources.gpus of 2 or more"),
        ("", "job.entrypoint: required (the Python script to run), or job.command"),
    ],
)
def test_bad_commands__are_one_line_errors(job: str, message: str) -> None:
    with pytest.raises(BundleError) as err:
        _spec(job)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_too_many_steps__are_refused() -> None:
    steps = "".join(f'[[job.steps]]\ncommand = ["python", "s{i}.py"]\n' for i in range(MAX_STEPS + 1))
    with pytest.raises(BundleError, match=f"at most {MAX_STEPS} steps"):
        _spec(steps)


def test_load_bundle__a_step_script_must_be_a_file_of_the_bundle(tmp_path: Path) -> None:
    (tmp_path / "job.toml").write_text(
        '[job]\n[[job.steps]]\nname = "prep"\ncommand = ["python", "prep.py"]\n'
        f'[[job.steps]]\nname = "train"\ncommand = ["python", "train.py"]\n{TAIL}'
    )
    (tmp_path / "prep.py").write_text("")
    with pytest.raises(BundleError, match=r"job step 2 \(train\): 'train.py' is not a file in the bundle"):
        load_bundle(tmp_path)
    (tmp_path / "train.py").write_text("")
    assert [s.name for s in load_bundle(tmp_path).spec.job.steps] == ["prep", "train"]


@pytest.mark.parametrize("name", ["multi_step", "torchrun_ddp"])
def test_the_examples__load(name: str) -> None:
    bundle = load_bundle(Path(__file__).resolve().parents[2] / "examples" / name)
    assert bundle.spec.verification.outputs
