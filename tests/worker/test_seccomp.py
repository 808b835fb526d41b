"""The seccomp filter, interpreted in Python for both architectures (no kernel needed)."""

from __future__ import annotations

import sys

import pytest

from worker.sandbox.seccomp import (
    AUDIT_ARCH_AARCH64,
    AUDIT_ARCH_X86_64,
    DENY,
    ENOSYS,
    EPERM,
    RET_ALLOW,
    RET_ERRNO,
    RET_KILL_PROCESS,
    SPECIAL,
    TIOCSTI,
    build,
    filter_program,
    run_filter,
)

ARCHES = [(AUDIT_ARCH_X86_64, 0), (AUDIT_ARCH_AARCH64, 1)]
DENIED, NOSYS = RET_ERRNO | EPERM, RET_ERRNO | ENOSYS


@pytest.mark.parametrize(("arch", "col"), ARCHES, ids=["x86_64", "aarch64"])
def test_every_denied_call__gets_eperm(arch: int, col: int) -> None:
    program = filter_program()
    for name, numbers in DENY.items():
        if numbers[col] is not None:
            assert run_filter(program, arch, numbers[col]) == DENIED, name


@pytest.mark.parametrize(("arch", "col"), ARCHES, ids=["x86_64", "aarch64"])
def test_clone_personality_and_ioctl__are_judged_by_their_arguments(arch: int, col: int) -> None:
    program = filter_program()
    clone, personality, ioctl = SPECIAL["clone"][col], SPECIAL["personality"][col], SPECIAL["ioctl"][col]
    assert run_filter(program, arch, clone, (0x01200011,)) == RET_ALLOW  # fork()
    assert run_filter(program, arch, clone, (0x003D0F00,)) == RET_ALLOW  # pthread_create
    assert run_filter(program, arch, clone, (0x10000011,)) == DENIED  # CLONE_NEWUSER
    assert run_filter(program, arch, clone, (0x00020011,)) == DENIED  # CLONE_NEWNS
    assert run_filter(program, arch, clone, (0x40000011,)) == DENIED  # CLONE_NEWNET
    assert run_filter(program, arch, SPECIAL["clone3"][col]) == NOSYS  # glibc falls back to clone
    assert run_filter(program, arch, personality, (0xFFFFFFFF,)) == RET_ALLOW  # query
    assert run_filter(program, arch, personality, (0x0040000,)) == DENIED  # ADDR_NO_RANDOMIZE
    assert run_filter(program, arch, ioctl, (1, TIOCSTI)) == DENIED
    assert run_filter(program, arch, ioctl, (1, 0x5401)) == RET_ALLOW  # TCGETS


def test_ordinary_calls__are_allowed_and_foreign_abis_are_not() -> None:
    program = filter_program()
    for nr in (0, 1, 2, 9, 57, 59, 60, 202, 231):  # read write open mmap fork execve exit futex exit_group
        assert run_filter(program, AUDIT_ARCH_X86_64, nr) == RET_ALLOW, nr
    for nr in (63, 64, 56, 222, 98, 221, 94):  # read write openat mmap futex execve exit_group
        assert run_filter(program, AUDIT_ARCH_AARCH64, nr) == RET_ALLOW, nr
    assert run_filter(program, AUDIT_ARCH_X86_64, 0x40000000 | 165) == DENIED  # x32 mount
    assert run_filter(program, 0x40000003, 21) == RET_KILL_PROCESS  # i386 through int 0x80


def test_the_program__is_small_and_deterministic() -> None:
    program = build()
    assert program == filter_program() and len(program) % 8 == 0
    assert len(program) // 8 < 256


def test_syscall_numbers__match_libseccomp() -> None:
    if "/usr/lib/python3/dist-packages" not in sys.path:
        sys.path.append("/usr/lib/python3/dist-packages")
    seccomp = pytest.importorskip("seccomp", reason="libseccomp's Python bindings (Debian python3-seccomp)")
    for name, numbers in {**DENY, **SPECIAL}.items():
        for arch, col in ((seccomp.Arch.X86_64, 0), (seccomp.Arch.AARCH64, 1)):
            try:
                want = seccomp.resolve_syscall(arch, name)
            except Exception:
                want = None
            assert (None if want is None or want < 0 else want) == numbers[col], (name, arch)
