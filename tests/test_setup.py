"""The README's two set-up commands install everything hutch runs.

`bash .ci/setup` (the first command, without --tests) must install every system program the
main job starts (`hutch demo`, `hutch queue up`, `hutch shell`): a machine with only what it
installed runs the demo. hutch finds each system program it starts through
`hutch.services.system_program`, whose list must match `.ci/system-packages`'s main list, and
nothing else in hutch's code starts a program by name.
"""

import ast
import re
import subprocess
from pathlib import Path

from hutch.services import SYSTEM_PROGRAMS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ["src", "devices", "plans", "simulators"]
# Calls that start a process from a command list.
_STARTERS = {"Popen", "run", "call", "check_call", "check_output", "spawn_detached",
             "create_subprocess_exec", "execvp", "execv"}  # fmt: skip


def _listed(*flags: str) -> dict[str, str]:
    out = subprocess.run(
        ["bash", str(ROOT / ".ci/system-packages"), "--list", *flags],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return dict(line.split() for line in out.splitlines())


def _calls() -> list[tuple[str, ast.Call]]:
    calls = []
    for directory in PACKAGE_DIRS:
        for path in sorted((ROOT / directory).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            calls += [
                (f"{path.relative_to(ROOT)}:{node.lineno}", node)
                for node in ast.walk(tree)
                if isinstance(node, ast.Call)
            ]
    return calls


def _name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def test_the_first_command_installs_every_system_program_hutch_starts():
    main = _listed()
    assert SYSTEM_PROGRAMS.items() <= main.items(), (
        f"hutch starts {SYSTEM_PROGRAMS}, but `bash .ci/setup` (without --tests) installs "
        f"only {main}: add them to .ci/system-packages's main list"
    )
    # --tests adds to the main list, never replaces it.
    assert main.items() <= _listed("--tests").items()


def test_hutch_finds_system_programs_only_through_system_program():
    for where, call in _calls():
        name = _name(call)
        if name == "which":
            assert where.startswith("src/hutch/services.py"), (
                f"{where}: find system programs with hutch.services.system_program, so that "
                "bash .ci/setup is known to install them"
            )
        if name == "system_program":
            (argument,) = call.args
            assert isinstance(argument, ast.Constant), f"{where}: name the program literally"
            assert argument.value in SYSTEM_PROGRAMS, (
                f"{where}: {argument.value} is not in hutch.services.SYSTEM_PROGRAMS"
            )
        if name in _STARTERS and call.args and isinstance(call.args[0], ast.List | ast.Tuple):
            first = call.args[0].elts[0] if call.args[0].elts else None
            assert not isinstance(first, ast.Constant), (
                f"{where}: starts {first.value!r} by name; find it with system_program"
            )


def test_readme_commands_are_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    first, second = (line.split("#")[0].strip() for line in block.strip().splitlines()[:2])
    assert first == "bash .ci/setup && .venv/bin/hutch demo"
    assert second == "bash .ci/setup --tests && .venv/bin/pytest"
    assert second in (ROOT / ".ci/run").read_text()
