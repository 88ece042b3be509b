"""Every file an operator hands the tool: bounded, regular, UTF-8 and shallow, or one
line and exit 2, before anything runs (never a traceback, never a hang)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tenant_infra import inputs
from tenant_infra.errors import InvalidInput

ROOT = Path(__file__).resolve().parents[1]
TENANTCTL = Path(sys.executable).parent / "tenantctl"


def nested_json(path: Path) -> None:
    path.write_text("[" * 50_000 + "]" * 50_000)


def nested_yaml(path: Path) -> None:
    path.write_text("config:\n  k: " + "[" * 5_000 + "]" * 5_000 + "\n")


def laughs(path: Path) -> None:
    """A small file that stands for 10**9 values through aliases."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path.write_text("config:\n" + "\n".join("  " + line for line in lines) + "\n")


def binary(path: Path) -> None:
    path.write_bytes(b'{"config": "\xff\xfe\x00"}')


def huge(path: Path) -> None:
    with path.open("wb") as handle:  # sparse: costs no disk
        handle.truncate(inputs.MAX_BYTES + 1)


def fifo(path: Path) -> None:
    os.mkfifo(path)


def big_number(path: Path) -> None:
    path.write_text('{"config": ' + "9" * 5000 + "}")


def bad_date(path: Path) -> None:
    path.write_text("config:\n  when: 2020-13-45\n")


def long_aliases(path: Path) -> None:
    """1.2 MB that stands for 20 GB of text once its aliases are written out."""
    text = "x" * (1 << 20)
    path.write_text("config:\n  s: &s " + text + "\n  junk: [" + ", ".join(["*s"] * 20_000) + "]\n")


MAKERS: dict[str, Callable[[Path], None]] = {
    "nested-json": nested_json,
    "nested-yaml": nested_yaml,
    "billion-laughs": laughs,
    "non-utf8": binary,
    "huge": huge,
    "fifo": fifo,
    "big-number": big_number,
    "bad-date": bad_date,
    "long-aliases": long_aliases,
}
SPECIAL = {"dev-zero": "/dev/zero", "directory": "/tmp"}

VERBS = {
    "plan --stack-config": ["plan", "acme", "--stack-config", "{}"],
    "onboard --from": ["onboard", "newco", "--service", "ledger:SCHEMA", "--from", "{}"],
    "verify --connections": ["verify", "acme", "--connections", "{}"],
    "migrate --connections": ["migrate", "--product", "ledger", "--dsn", "host=127.0.0.1 dbname=postgres", "--connections", "{}"],
}


def run(argv: list[str], stdin: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "TENANT_INFRA_"))}
    handle = stdin.open("rb") if stdin is not None else subprocess.DEVNULL
    try:
        return subprocess.run(
            [str(TENANTCTL), *argv], cwd=ROOT, env=env, stdin=handle,
            capture_output=True, timeout=30, check=False,
            text=False,
        )  # type: ignore[call-overload,no-any-return]
    finally:
        if stdin is not None:
            handle.close()  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", [*MAKERS, *SPECIAL])
@pytest.mark.parametrize("verb", list(VERBS))
def test_a_bad_file_is_one_line_and_exit_2(tmp_path: Path, verb: str, kind: str) -> None:
    if kind in SPECIAL:
        path = SPECIAL[kind]
    else:
        path = str(tmp_path / f"bad-{kind}")
        MAKERS[kind](Path(path))
    result = run([a.format(path) for a in VERBS[verb]])
    err = result.stderr.decode()
    assert (result.returncode, result.stdout) == (2, b""), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert path in err
    assert not (ROOT / "stacks" / "Pulumi.newco.yaml").exists()  # nothing created


@pytest.mark.parametrize("kind", ["nested-json", "non-utf8", "huge"])
def test_serve_refuses_bad_documents_on_stdin(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"bad-{kind}"
    MAKERS[kind](path)
    result = run(["serve", "--listen", "127.0.0.1:1", "--connections", "-"], stdin=path)
    err = result.stderr.decode()
    assert result.returncode == 2 and len(err.strip().splitlines()) == 1, err


def test_a_good_file_reads_and_a_deep_one_is_refused_in_process(tmp_path: Path) -> None:
    good = tmp_path / "ok.json"
    good.write_text('{"a": [1, {"b": 2}]}')
    assert inputs.read_json(good, "document") == {"a": [1, {"b": 2}]}
    deep = tmp_path / "deep.json"
    deep.write_text("[" * (inputs.MAX_DEPTH + 2) + "]" * (inputs.MAX_DEPTH + 2))
    with pytest.raises(InvalidInput, match="nested deeper"):
        inputs.read_json(deep, "document")
    fine = tmp_path / "fine.json"
    fine.write_text("[" * inputs.MAX_DEPTH + "]" * inputs.MAX_DEPTH)
    inputs.read_json(fine, "document")


@pytest.mark.parametrize(
    "text",
    [
        "config:\n  tenant-infra:tenant: '0042'\n  n: 0042\n  when: 2026-12-02T10:00:00Z\n",
        "config: [unclosed\n",
        "a: &x [1, 2]\nb: *x\n",
        "a: " + "[" * 40 + "]" * 40 + "\n",
        "\t- tab\n",
    ],
)
def test_libyaml_reads_what_the_pure_loader_reads_and_fails_the_same(
    tmp_path: Path, text: str
) -> None:
    """``read_yaml(libyaml=True)`` (fleet-sized reads) gives the same value, or the same
    error, word for word."""
    path = tmp_path / "Pulumi.x.yaml"
    path.write_text(text)
    outcomes = []
    for libyaml in (False, True):
        try:
            outcomes.append(("value", inputs.read_yaml(path, "stack config", libyaml=libyaml)))
        except InvalidInput as exc:
            outcomes.append(("error", str(exc)))
    assert outcomes[0] == outcomes[1]
