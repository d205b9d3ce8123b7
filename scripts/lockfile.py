"""The lock file's three jobs, for scripts/lock.sh and scripts/bootstrap.sh (standard library only: it runs
in a fresh virtual environment before anything is installed there).

    python scripts/lockfile.py write LOCK < pip-freeze-output   write the lock from `pip freeze --all`
    python scripts/lockfile.py check LOCK                        exit 0 when this environment has exactly the
                                                                 locked versions (extra packages allowed)
    python scripts/lockfile.py constraints LOCK OUT              the lock as pip constraints for this
                                                                 environment (see `constraints`)

Left out of the lock: torch (scripts/bootstrap.sh installs the CPU build; a GPU machine keeps its own), its GPU
runtime (nvidia-*, triton) and dpop itself (installed editable from the checkout).
"""

from __future__ import annotations

import platform
import re
import sys
from importlib import metadata
from pathlib import Path

CPU_TORCH = "2.13.0"  # what scripts/bootstrap.sh installs where no torch is present
_EXCLUDED = re.compile(r"^(torch|triton|nvidia-.*|dpop)$")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def canonical(name: str) -> str:
    """PEP 503 name: `Foo_Bar.baz` and `foo-bar-baz` are the same project."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """{canonical name: version} of a lock file; a line that is not `name==version` fails naming it."""
    pins = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _PIN.match(line)
        if match is None:
            raise SystemExit(f"{path}:{number}: expected 'name==version', got {raw!r}")
        pins[canonical(match[1])] = match[2]
    return pins


def write(lock: Path, freeze_lines: list[str]) -> int:
    """Write the lock from `pip freeze --all` lines: pinned packages only, sorted, the exclusions dropped."""
    pins = {}
    for raw in freeze_lines:
        match = _PIN.match(raw.strip())
        if match is None:  # editable installs, comments, `name @ URL`: nothing to pin
            continue
        name = canonical(match[1])
        if not _EXCLUDED.match(name):
            pins[name] = match[2]
    header = [
        '# Exact versions of every package `pip install -e ".[dev]"` installs, resolved by scripts/lock.sh in a',
        f"# fresh virtual environment (Python {platform.python_version()}, {sys.platform} {platform.machine()}),",
        "# within pyproject.toml's ranges. Used as pip constraints by scripts/bootstrap.sh:",
        '#     pip install -c requirements.lock -e ".[dev]"',
        "# Renew deliberately with `bash scripts/lock.sh --upgrade`, then run the tests. Not in here: torch (the",
        f"# bootstrap installs torch=={CPU_TORCH}, the CPU build; a GPU machine keeps its own), nvidia-*, triton, dpop.",
        "# On another Python or platform, packages this one did not need resolve within pyproject's ranges.",
    ]
    body = [f"{name}=={version}" for name, version in sorted(pins.items())]
    lock.write_text("\n".join(header + body) + "\n", encoding="utf-8")
    return len(body)


def installed() -> dict[str, str]:
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def differences(pins: dict[str, str]) -> list[str]:
    have = installed()
    return [
        f"{name}: locked {version}, installed {have.get(name, 'nothing')}"
        for name, version in sorted(pins.items())
        if have.get(name) != version
    ]


def effective_pins(lock: Path) -> tuple[dict[str, str], list[str]]:
    """The lock's pins for this environment, and the names it leaves free. With a torch other than the CPU
    build the lock was made with (a GPU machine's own), the packages that torch itself requires are left
    free: that torch may pin them differently (torch 2.5 pins sympy==1.13.1), and its pins win over ours."""
    pins = read_lock(lock)
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return pins, []
    freed = []
    if torch_version.split("+")[0] != CPU_TORCH:
        for requirement in metadata.requires("torch") or []:
            name = canonical(re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0])
            if pins.pop(name, None) is not None:
                freed.append(name)
    return pins, freed


def check(lock: Path) -> int:
    """0 when every package the lock pins for this environment is installed at its locked version and dpop
    is installed; else 1, with the differences on stderr (extra packages are allowed)."""
    pins, _ = effective_pins(lock)
    problems = differences(pins)
    if "dpop" not in installed():
        problems.append("dpop: not installed")
    for line in problems[:20]:
        print(f"  {line}", file=sys.stderr)
    if len(problems) > 20:
        print(f"  … and {len(problems) - 20} more", file=sys.stderr)
    return 1 if problems else 0


def constraints(lock: Path, out: Path) -> int:
    """Write the lock's pins for this environment (`effective_pins`) as a pip constraints file."""
    pins, freed = effective_pins(lock)
    if freed:
        print(f"this machine's own torch {metadata.version('torch')} decides: {', '.join(freed)}")
    out.write_text(
        "".join(f"{name}=={version}\n" for name, version in sorted(pins.items())), encoding="utf-8"
    )
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "write":
        count = write(Path(argv[1]), sys.stdin.read().splitlines())
        print(f"{argv[1]}: {count} packages locked")
        return 0
    if len(argv) == 2 and argv[0] == "check":
        return check(Path(argv[1]))
    if len(argv) == 3 and argv[0] == "constraints":
        return constraints(Path(argv[1]), Path(argv[2]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
