"""`[job] env` in job.toml: environment variables for the job, checked when the bundle is read."""

from __future__ import annotations

from pathlib import Path

import pytest

from marketplace.errors import BundleError
from marketplace.protocol.bundle import MAX_ENV, MAX_ENV_BYTES, load_bundle


def _bundle(tmp_path: Path, env: str) -> Path:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "main.py").write_text("print('hi')\n")
    (tmp_path / "job.toml").write_text(
        f'[job]\nentrypoint = "main.py"\n{env}\n\n[resources]\ndevice = "cpu"\n\n[market]\nmax_price = "1"\n'
    )
    return tmp_path


def test_env__is_read_sorted_and_changes_the_bundle_hash(tmp_path: Path) -> None:
    bundle = load_bundle(_bundle(tmp_path / "a", 'env = { WANDB_MODE = "offline", A_1 = "x=y" }'))
    assert bundle.spec.job.env == (("A_1", "x=y"), ("WANDB_MODE", "offline"))
    plain = load_bundle(_bundle(tmp_path / "b", ""))
    assert plain.spec.job.env == () and plain.hash != bundle.hash


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ('env = ["A=1"]', "job.env: expected a table"),
        ('env = { lower = "1" }', "job.env: 'lower' is not a variable name"),
        ('env = { 1ABC = "1" }', "job.env: '1ABC' is not a variable name"),
        ('env = { "A-B" = "1" }', "job.env: 'A-B' is not a variable name"),
        ('env = { FLOPEX_SEED = "1" }', "job.env: FLOPEX_SEED is set by the worker"),
        ('env = { PATH = "/evil" }', "job.env: PATH is set by the worker"),
        ('env = { LD_PRELOAD = "x.so" }', "job.env: LD_PRELOAD is set by the worker"),
        ("env = { A = 1 }", "job.env.A: expected a string, got 1"),
        ('env = { A = "a\\u0000b" }', "job.env.A: holds a NUL character"),
        ("env = { " + ", ".join(f'V{i} = "1"' for i in range(MAX_ENV + 1)) + " }", f"at most {MAX_ENV} variables"),
        (f'env = {{ BIG = "{"x" * MAX_ENV_BYTES}" }}', f"at most {MAX_ENV_BYTES} bytes"),
    ],
)
def test_env__bad_entries__are_refused_with_the_reason(tmp_path: Path, env: str, message: str) -> None:
    with pytest.raises(BundleError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_bundle(_bundle(tmp_path, env))
